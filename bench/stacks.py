"""Summarise the worker's py-spy samples (`bench/run.py --profile DIR`): where the Python
CPU of the delivery path goes, by stage and by function, in ms per message.

    python bench/run.py --subscribers 40000 --naive 0 --profile /tmp/prof
    python bench/stacks.py /tmp/prof/*.txt --messages 40000 [--top 25] [--stage smtp]

The samples are those holding the GIL (Python's own CPU in the pool processes), taken
`--rate` times a second; a sample is charged to the first stage its stack enters, and to
the function at its top ("self") and every function on its way ("total"). The main
thread of a pool process runs a batch's lease, release and end (stage "batch", or
"ledger" for the ledger's own statements); "celery" is the rest of that thread.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# A stack's stage is the first of these (in this order) that one of its frames names:
# (stage, file, functions or None for any). A stage below another's frames, such as the
# metrics laps inside compose, counts for the outer one.
STAGES = (
    ("render", "worker/render/cache.py", {"VariantRenderer.variant"}),
    ("compose", "worker/render/compose.py", {"compose"}),
    ("ledger", "worker/delivery/ledger/", None),
    ("smtp", "worker/delivery/smtp.py", None),
    ("metrics", "worker/metrics.py", None),
    ("heartbeat", "worker/delivery/liveness.py", None),
    ("batch", "worker/delivery/pipeline.py", {"deliver_batch"}),
    ("celery", "celery/", None),
    ("kombu", "kombu/", None),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frames(line: str) -> tuple[list[tuple[str, str]], int]:
    """(frames root first as (function, file), samples) of one collapsed-stack line; the
    process frames py-spy puts first (the celery main process, then the pool process) are
    left out."""
    stack, _, count = line.rstrip("\n").rpartition(" ")
    parts = [p for p in stack.split(";") if not p.startswith("process ")]
    out = []
    for part in parts:
        match = _FRAME.match(part)
        out.append((match["function"], match["file"]) if match else (part, ""))
    return out, int(count)


def stage_of(stack: list[tuple[str, str]]) -> str:
    for stage, where, functions in STAGES:
        if any(where in file and (functions is None or function in functions) for function, file in stack):
            return stage
    return "other"


def name(frame: tuple[str, str]) -> str:
    return f"{frame[1]}:{frame[0]}"


def summarise(paths: list[Path], *, messages: int, rate: int, top: int, only: str | None) -> str:
    by_stage: Counter = Counter()
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, count = frames(line) if line.strip() else ([], 0)
            if not stack:  # a process frame alone: py-spy caught it between frames
                continue
            stage = stage_of(stack)
            samples += count
            by_stage[stage] += count
            if only and stage != only:
                continue
            own[name(stack[-1])] += count
            for frame in set(stack):
                total[name(frame)] += count

    def ms(count: int) -> str:
        return f"{count / rate / max(messages, 1) * 1000:7.3f}"

    lines = [f"{samples} samples at {rate}/s = {samples / rate:.1f} s of GIL-holding CPU; "
             f"{samples / rate / max(messages, 1) * 1000:.3f} ms per message over {messages} messages", "",
             "stage        ms/msg  share"]
    lines += [f"{stage:<12} {ms(n)}  {n / max(samples, 1):5.1%}" for stage, n in by_stage.most_common()]
    scope = f" (stage {only})" if only else ""
    lines += ["", f"self{scope}: ms/msg  share  function"]
    lines += [f"  {ms(n)}  {n / max(samples, 1):5.1%}  {fn}" for fn, n in own.most_common(top)]
    lines += ["", f"total{scope}: ms/msg  share  function"]
    lines += [f"  {ms(n)}  {n / max(samples, 1):5.1%}  {fn}" for fn, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="py-spy raw files (bench/run.py --profile DIR)")
    parser.add_argument("--messages", type=int, required=True, help="messages the profiled run sent")
    parser.add_argument("--rate", type=int, default=200, help="py-spy's samples per second (bench/run.py's)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stage", help="functions of this stage only (render, compose, ledger, smtp, ...)")
    args = parser.parse_args()
    print(summarise(args.paths, messages=args.messages, rate=args.rate, top=args.top, only=args.stage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
