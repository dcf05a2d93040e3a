"""`newsletter preview` and `newsletter serve`."""

from __future__ import annotations

from pathlib import Path

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.errors import UsageError

# Per gunicorn worker process (`serve --workers N`).
THREADS = 4


@cli.command()
@click.option("--week", help="ISO week such as 2025-W05 (default: the week that ended last).")
@click.option("--regions", help="Ordered region codes, e.g. RU,UA.")
@click.option("--email", help="Preview what this subscriber would get.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Folder (default var/preview).")
@click.option("--open", "open_", is_flag=True, help="Open the HTML in a browser.")
@click.option("--language", help="Our words in this language (en, ru, uk); default: the subscriber's, "
              "else NEWSLETTER_LANGUAGE.")
@pass_ctx
def preview(ctx: Context, week: str | None, regions: str | None, email: str | None,
            out: Path | None, open_: bool, language: str | None) -> None:
    """Write digest.html, digest.txt and digest.eml; send nothing."""
    from worker.preview import build_preview, resolve_week, size_line, write_preview

    if regions and email:
        raise UsageError("give --regions or --email, not both")
    codes = _regions(regions) if regions else None
    window = resolve_week(week, ctx.settings)
    if language is not None:
        from worker.i18n import LanguageError, language_of

        try:
            language = language_of(language)
        except LanguageError as exc:
            raise UsageError(f"--language: {exc}") from None
    result = build_preview(ctx.engine, ctx.settings, window=window, regions=codes, email=email, language=language)
    paths = write_preview(result, out or ctx.settings.preview_dir)
    click.echo(f"{window.label}: {' '.join(result.selection.regions)}, "
               f"{result.selection.story_count} stories, subject: {result.variant.subject}")
    for path in paths.values():
        click.echo(str(path))
    line = size_line(result.variant)
    click.echo(line, err=result.variant.clipped)
    if open_:
        import webbrowser

        webbrowser.open(paths["html"].resolve().as_uri())


def _regions(text: str) -> tuple[str, ...]:
    from worker.regions import RegionError, parse_regions

    try:
        codes = tuple(parse_regions(text))
    except RegionError as exc:
        raise UsageError(f"--regions: {exc}") from None
    if not codes:
        raise UsageError("--regions: no region codes given")
    return codes


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", type=click.IntRange(min=1),
              help="Run under gunicorn with this many worker processes (production). "
                   "Without it: Werkzeug's development server.")
@pass_ctx
def serve(ctx: Context, host: str, port: int, workers: int | None) -> None:
    """Operator preview pages; readers' one-click unsubscribe and view-online archive."""
    from worker.readiness import require_ready
    from worker.web import create_app

    # Over SMTP the sign-up mails real people links signed with the key: as for the worker.
    require_ready(ctx.settings)
    app = create_app(ctx.settings, ctx.engine)  # settings and schema checked here, with a one-line error
    if workers:
        import os
        import sys

        ctx.engine.dispose()
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # exec, not a child: gunicorn takes over this process id and its signals (PID 1 in a container).
        # Each gunicorn worker builds its own settings and engine through the factory.
        # No control socket: gunicorn would otherwise open a management interface in $HOME.
        # Threads: a long download (the subscriber list's export) neither blocks the other
        # requests of its process nor gets it killed by the 30 s timeout of a sync worker,
        # which reads a busy request as a hung process.
        os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
                                  "--worker-class", "gthread", "--threads", str(THREADS),
                                  "--no-control-socket", "worker.web:create_app_from_env()"])
    click.echo(f"serving on http://{host}:{port}/ (Ctrl-C to stop)")
    from werkzeug.serving import run_simple

    run_simple(host, port, app, threaded=True, use_reloader=False)
