"""CPU per region set render: every region set of bench/run.py's week (10 regions, 8
stories each, readers following 1 to 3 in any order: 820 sets), rendered with its CSS
inlined whole (the reference) and assembled from sections inlined once per edition
(worker/render/sections.py), in the same process, with each inliner. Needs no service.

    python bench/render.py [--inliner premailer --inliner css-inline] [--sets N] [--repeat 3]

Prints, per inliner, process CPU per region set of render_variant (Jinja2, text part and
clip measurement included) and of its inlining alone, each the least of --repeat runs
that each start a fresh cache as an edition does; the ratio of the two paths; the
inliner calls each made; and whether every document of the sections path equals the
reference.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import REGIONS, SUMMARY, WEEK  # noqa: E402
from worker import metrics  # noqa: E402
from worker.digest import select_sections, week_window  # noqa: E402
from worker.digest.select import StoryItem  # noqa: E402
from worker.render.digest import TEMPLATE, build_context, render_variant  # noqa: E402
from worker.render.env import get_template  # noqa: E402
from worker.render.personalise import new_nonce  # noqa: E402
from worker.render.sections import SectionCache, inline_whole  # noqa: E402
from worker.settings import load_settings  # noqa: E402


def week(rng: random.Random) -> list[StoryItem]:
    """bench/run.py's seed, without a database: 8 stories a region, the first of each also
    tagged with a random region."""
    stories = []
    for region in REGIONS:
        for k in range(8):
            n = len(stories) + 1
            when = datetime(2025, 1, 27 + k % 5, 6 + k, tzinfo=UTC)
            summary = SUMMARY.format(day=when.strftime("%A"))
            tags = [region] + ([rng.choice(REGIONS)] if k == 0 else [])
            stories.append(StoryItem(
                id=n, guid=f"bench-{n}", url=f"https://news.example/{region}/{n}",
                title=f"{region}: parliament debates the budget plan, story {n}", summary_html=f"<p>{summary}</p>",
                summary_text=summary, published_at=when, source="melangenews", image_url=None,
                regions=tuple(dict.fromkeys(tags))))
    return stories


def cpu_ms_per(count: int, runs: dict, *, repeat: int) -> dict[str, float]:
    """Per item, the least process CPU of `repeat` runs of each, taken in turns: other work
    on the machine only adds, and drifts alike for both."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            gc.collect()
            started = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - started)
    return {name: seconds / count * 1000 for name, seconds in best.items()}


def measure(inliner: str, selections: list, *, settings, window, repeat: int) -> dict:
    settings = settings.model_copy(update={"css_inliner": inliner})
    key = f"weekly-{WEEK}"

    def render_all(sections: SectionCache | None) -> None:
        for selection in selections:
            render_variant(selection=selection, window=window, edition_key=key, settings=settings, sections=sections)

    def calls(run) -> int:
        before = metrics.sample("newsletter_inliner_calls_total", inliner=inliner)
        run()
        return int(metrics.sample("newsletter_inliner_calls_total", inliner=inliner) - before)

    # Each run starts a fresh cache, as an edition does: its first inlinings are counted too.
    render = cpu_ms_per(len(selections), {"reference": lambda: render_all(None),
                                          "sections": lambda: render_all(SectionCache())}, repeat=repeat)
    # The inlining alone, of the same rendered documents.
    template = get_template(settings.templates_dir, f"{TEMPLATE}/body.html")
    nonces = [new_nonce() for _ in selections]
    bodies = [template.render(build_context(selection=s, window=window, edition_key=key, settings=settings, nonce=n))
              for s, n in zip(selections, nonces, strict=True)]

    def reference() -> list[str]:
        return [inline_whole(b, nonce=n, inliner=inliner) for b, n in zip(bodies, nonces, strict=True)]

    def sections(cache: SectionCache) -> list[str]:
        return [cache.inline(b, nonce=n, inliner=inliner) for b, n in zip(bodies, nonces, strict=True)]

    inline = cpu_ms_per(len(bodies), {"reference": reference, "sections": lambda: sections(SectionCache())},
                        repeat=repeat)
    cache = SectionCache()
    return {
        "region_sets": len(selections),
        "render_variant_cpu_ms": {**_rounded(render), "ratio": round(render["reference"] / render["sections"], 2)},
        "inline_cpu_ms": {**_rounded(inline), "ratio": round(inline["reference"] / inline["sections"], 2)},
        "inliner_calls": {"reference": calls(reference), "sections": calls(lambda: sections(cache))},
        "identical": sections(SectionCache()) == reference(),
        "fallbacks": {str(k): v for k, v in cache.fallbacks.items()},
    }


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inliner", action="append", choices=["premailer", "css-inline"])
    parser.add_argument("--sets", type=int, default=0, help="the first N region sets only (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the least CPU is kept")
    args = parser.parse_args()
    settings = load_settings({"NEWSLETTER_SECRET_KEY": "bench"})
    window = week_window(WEEK, settings.tz)
    stories = week(random.Random(1))
    sets = [s for size in (1, 2, 3) for s in itertools.permutations(REGIONS, size)][:args.sets or None]
    selections = [select_sections([s for s in stories if set(s.regions) & set(regions)], regions,
                                  per_region=settings.stories_per_region) for regions in sets]
    report = {inliner: measure(inliner, selections, settings=settings, window=window, repeat=args.repeat)
              for inliner in args.inliner or ["premailer", "css-inline"]}
    print(json.dumps(report, indent=2))
    return 0 if all(r["identical"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
