"""`newsletter deliveries resolve`: decide the rows an edition left `unknown`."""

from __future__ import annotations

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.cli.who import who as current_user
from worker.errors import UsageError


@cli.group()
def deliveries() -> None:
    """Ledger rows of an edition."""


@deliveries.command()
@click.argument("edition")
@click.argument("addresses", nargs=-1, metavar="[ADDR]...")
@click.option("--sent", "as_sent", is_flag=True, help="They arrived: count them as sent.")
@click.option("--resend", is_flag=True, help="They did not arrive: send them again.")
@click.option("--all", "all_rows", is_flag=True, help="Every unknown row of the edition.")
@pass_ctx
def resolve(ctx: Context, edition: str, addresses: tuple[str, ...], as_sent: bool, resend: bool,
            all_rows: bool) -> None:
    """Decide an edition's `unknown` rows (the server may have accepted the message when
    the worker died or the connection dropped): --sent or --resend, for ADDR... or --all.
    Each decision is kept on the row with who made it and when (`newsletter status EDITION`)."""
    from worker import editions
    from worker.readers.subscribers import InvalidSubscriber, check_address
    from worker.store.models import EditionState

    if as_sent == resend:
        raise UsageError("give --sent (they arrived) or --resend (send them again)")
    if bool(addresses) == all_rows:
        raise UsageError("give the addresses to decide, or --all")
    try:
        keys = None if all_rows else [check_address(address)[1] for address in addresses]
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    result = editions.decide_unknown(ctx.engine, edition, sent=as_sent, keys=keys, who=current_user())
    verb = "marked sent" if as_sent else "to be sent again"
    click.echo(f"{result.key}: {result.changed} unknown {'row' if result.changed == 1 else 'rows'} {verb} "
               f"(by {result.who} at {result.at:%Y-%m-%d %H:%M} UTC)")
    for key, state in result.not_unknown.items():
        where = f"its row is {state}" if state else "no row in this edition"
        click.echo(f"error: {key}: not unknown in {result.key} ({where}): left as it is", err=True)
    if not as_sent and result.changed:
        if result.state is EditionState.PAUSED:
            click.echo(f"{result.key} is paused: they go out after `newsletter resume {result.key}`")
        else:
            click.echo(f"a running worker sends them within a minute (the reconciler hands them out); "
                       f"`newsletter resume {result.key} --inline` sends them now")
    if result.not_unknown:
        raise click.exceptions.Exit(1)
