"""Thin task shells: ids in, one plain function each.

`send_batch` delivers one batch; `reconcile` is the tick (beat runs it every minute,
and at the weekly send time so the edition is planned on the minute); `process_bounces`
reads the bounce mailbox (docs/bounces.md).

The delivery and bounce path (rendering, SMTP, the ledger, bounce parsing) is imported
where it runs: in `_runtime()`, which each pool process calls as it starts, and in the
task bodies (a lookup in `sys.modules` from then on). `celery worker`'s main process
imports this module only to learn the tasks' names and run the signals below; without
that path it starts at about 75 MB instead of 122 MB, and the pool's processes, forked
from it, start as small (tests/test_layers.py keeps it so).
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from functools import cache
from typing import Any

from celery import shared_task
from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.utils.log import get_task_logger
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from worker import metrics
from worker.celery_app import (
    COUNT_LIVE_EDITIONS,
    PROCESS_BOUNCES,
    RECONCILE,
    RECOVERED_PRIORITY,
    SEND_BATCH,
    publisher,
    quiet_broker_reconnects,
)
from worker.clock import utcnow
from worker.errors import ConfigError
from worker.readiness import require_ready
from worker.settings import Settings, load_settings, unknown_env_vars
from worker.store.db import create_db_engine, current_revision, describe_database, head_revision

log = get_task_logger(__name__)


def _check_schema(settings, engine) -> None:
    if current_revision(engine) != head_revision():
        raise ConfigError(f"the database schema is missing or out of date ({describe_database(settings.database_url)})"
                          ": run `newsletter db upgrade`, then restart the worker")


@worker_init.connect
def _refuse_an_old_schema(**_) -> None:
    # In the main process, before the pool starts: a worker on a schema it does not know
    # exits with the reason, instead of failing (and using up) every task it takes. So
    # does one whose configuration is not ready for real mail (worker/readiness.py).
    # The check runs in a process forked for it: the database driver it loads (12 MB
    # with psycopg) then never stays in the main process, nor crosses into the pool.
    child = os.fork()
    if child == 0:
        os._exit(_check_ready())
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if code == 2:
        raise SystemExit(2)
    if code:
        # As before the fork: an unexpected failure (the database unreachable) is logged and
        # the worker starts; its pool processes meet it again and say so.
        log.warning("the start-up check failed unexpectedly (exit %s): see the traceback above", code)


def _check_ready() -> int:
    """The forked check's exit status: 0 ready, 2 refused (said on stderr), 1 failed."""
    try:
        settings = load_settings()
        require_ready(settings)
        engine = create_db_engine(settings.database_url, create=False)
        _check_schema(settings, engine)
    except ConfigError as exc:
        # Logging is not set up yet at this point: the reason goes to stderr itself.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - reported by the parent's log as before
        traceback.print_exc()
        return 1
    finally:
        sys.stderr.flush()
    return 0


@celeryd_after_setup.connect
def _quiet_reconnects(**_) -> None:
    # After Celery set up logging (which turns every Celery deprecation warning on).
    quiet_broker_reconnects()


@dataclass(frozen=True)
class _Runtime:
    settings: Settings
    engine: Engine
    sender: Any       # worker.delivery.outcome.Sender (a pool of SMTP connections, or a file/console one)
    throttle: Any     # worker.delivery.ratelimit's throttle, shared by every worker through Redis
    heartbeat: Any    # worker.delivery.liveness.Heartbeat


@cache
def _runtime() -> _Runtime:
    """Settings, engine, sender and throttle, once per worker process; and the process's
    heartbeat (worker/delivery/liveness.py), started before it can take any lease."""
    from worker import editions
    from worker.delivery.lanes import database_pool
    from worker.delivery.liveness import Heartbeat
    from worker.delivery.pipeline import worker_name
    from worker.delivery.ratelimit import make_throttle
    from worker.delivery.senders import make_sender_pool
    from worker.render.links import one_click_warning

    settings = load_settings()
    for name, close in unknown_env_vars():
        log.warning("%s is not a setting and is ignored%s", name, f"; did you mean {close}?" if close else "")
    warning = one_click_warning(settings)
    if warning:
        log.warning("%s", warning)
    # create=False: a worker started in the wrong directory must not leave an empty database there.
    engine = create_db_engine(settings.database_url, pool_size=database_pool(settings), create=False)
    _check_schema(settings, engine)
    heartbeat = Heartbeat(
        engine, worker_name(), timeout=settings.liveness_timeout, clock=utcnow,
        on_recovered=lambda lost: editions.recover(engine, settings, lost, publish_recovered),
    ).start()
    return _Runtime(settings, engine, make_sender_pool(settings), make_throttle(settings), heartbeat)


@celeryd_after_setup.connect
def _serve_metrics(**_) -> None:
    # `celery worker`'s main process, logging set up, the pool not forked yet: the pool
    # processes count into files in a directory set up here, and this process serves
    # their sum on NEWSLETTER_METRICS_PORT.
    metrics.serve_worker(load_settings().metrics_port)


@worker_shutdown.connect
def _stop_metrics(**_) -> None:
    metrics.stop_worker()


@worker_process_init.connect
def _start_process(**_) -> None:
    # A pool process beats from the moment it starts, not from its first task: after a
    # crash the restarted worker's processes are what recover the dead one's rows, and
    # the dead one's own tasks sit unacknowledged in the broker.
    _runtime()


@worker_process_shutdown.connect
def _stop_process(**_) -> None:
    if _runtime.cache_info().currsize:
        _runtime().heartbeat.stop()


publish_batch = publisher()
# Rows a dead worker held go ahead of the backlog (worker/celery_app.py: priorities).
publish_recovered = publisher(priority=RECOVERED_PRIORITY)


# A database outage mid-batch is waited out by the lanes (pipeline.outlast); one that
# outlasts the batch fails it. Nothing is sent without a claim, so the batch can simply
# run again later: its leases carry the task's id, so the retry (the same id, in any
# process) takes its rows back at once.
@shared_task(name=SEND_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError, InterfaceError), retry_backoff=2, retry_backoff_max=60,
             max_retries=20, retry_jitter=True)
def send_batch(self, edition_id: int, delivery_ids: list[int]) -> dict:
    from worker.editions import deliver_batch

    run = _runtime()
    report = deliver_batch(run.engine, run.settings, edition_id=edition_id, delivery_ids=delivery_ids,
                           sender=run.sender, throttle=run.throttle, token=self.request.id)
    log.info("edition %s batch of %s: %s%s", edition_id, len(delivery_ids),
             {str(k): v for k, v in report.outcomes.items()},
             f" (stopped: {report.stopped})" if report.stopped else "")
    return {str(k): v for k, v in report.outcomes.items()}


@shared_task(name=RECONCILE)
def reconcile() -> str:
    from worker import editions

    run = _runtime()
    result = editions.reconcile(run.engine, run.settings, publish_batch)
    summary = (f"due {result.due.key}: {result.due.action}; " if result.due else "") + \
        f"{result.expired} expired, {result.batches} batches, finished {result.finished}"
    log.info("reconcile: %s", summary)
    return summary


@shared_task(name=COUNT_LIVE_EDITIONS)
def count_live_editions() -> str:
    from worker.delivery.tallies import refresh_live

    counted = refresh_live(_runtime().engine)
    if counted:
        log.info("live counts: editions %s counted for the console", counted)
    return f"{len(counted)} counted"


# Its own schedule entry (worker/celery_app.py, only with NEWSLETTER_BOUNCE_MAILBOX set):
# reading a mailbox must never delay the reconcile tick.
@shared_task(name=PROCESS_BOUNCES)
def process_bounces() -> str:
    from worker.bounces.mailboxes import process_configured

    run = _runtime()
    summary = process_configured(run.engine, run.settings, now=utcnow())
    text = "no mailbox set" if summary is None else summary.describe()
    log.info("bounces: %s", text)
    for kept in summary.kept if summary else ():
        log.warning("bounces: kept for a human: %s", kept)
    return text
