"""The Celery app and its beat schedule, built from settings when first asked for."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

from celery import Celery
from celery.beat import PersistentScheduler
from celery.exceptions import CPendingDeprecationWarning
from celery.schedules import crontab
from kombu import Queue

from worker.health import touch_beat
from worker.settings import Settings, load_settings

SEND_QUEUE = "send"
# The tasks by name (worker/tasks.py): publishing and scheduling need no task code.
SEND_BATCH = "worker.tasks.send_batch"
RECONCILE = "worker.tasks.reconcile"
PROCESS_BOUNCES = "worker.tasks.process_bounces"
COUNT_LIVE_EDITIONS = "worker.tasks.count_live_editions"
# Batch priorities. On Redis a lower number goes first (kombu keeps one list per step of
# priority_steps and BRPOPs them in order; a message without one counts as 0): rows
# handed out again after a crash overtake the backlog of fresh batches.
RECOVERED_PRIORITY, FRESH_PRIORITY = 0, 6
# Beat's own bookkeeping (last run times), beside the SQLite default; `-s PATH` overrides it.
BEAT_SCHEDULE_FILE = Path("var") / "celerybeat-schedule"


class Scheduler(PersistentScheduler):
    """Celery's file-backed scheduler, creating the file's folder first, and saying it is
    alive (worker/health.py) each time it hands a task to the broker."""

    def setup_schedule(self):
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        # Reached only once the broker took the message: `newsletter health beat` reads this.
        touch_beat(self.schedule_filename)
        return result


DAY_NUMBERS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def create_app(settings: Settings) -> Celery:
    app = Celery("worker", broker=settings.broker_url, include=["worker.tasks"])
    hour, minute = settings.send_time.split(":")
    # Redis re-delivers an unacknowledged task after visibility_timeout; every task
    # must finish (or be killed by its hard limit) well before that.
    visibility = settings.visibility_timeout
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged after it ran; if the worker dies it runs again.
        # Safe because the ledger makes every task idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.batch_lease_seconds,
        # deliver_batch stops taking rows at 80 % of the lease; the soft limit is a backstop.
        task_soft_time_limit=max(int(settings.batch_lease_seconds * 0.9), 1),
        # kombu looks for unacknowledged tasks past the timeout every 10 s, but by default
        # acts only on every 10th look; act on each look, and look sooner for short timeouts.
        broker_transport_options={"visibility_timeout": visibility,
                                  "unacked_restore_interval": min(10.0, max(visibility / 4, 0.5)),
                                  "unacked_restore_throttle": 1,
                                  "priority_steps": [RECOVERED_PRIORITY, FRESH_PRIORITY]},
        broker_connection_retry_on_startup=True,
        task_routes={SEND_BATCH: {"queue": SEND_QUEUE}},
        task_default_queue="celery",
        # Declared, so a plain `celery -A worker worker` consumes both (`-Q` still narrows it).
        task_queues=(Queue("celery"), Queue(SEND_QUEUE)),
        beat_scheduler="worker.celery_app:Scheduler",
        beat_schedule_filename=str(BEAT_SCHEDULE_FILE),
        timezone=settings.timezone,
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "weekly-send": {
                "task": RECONCILE,
                "schedule": crontab(minute=int(minute), hour=int(hour),
                                    day_of_week=DAY_NUMBERS[settings.send_day], app=app),
            },
            "reconcile": {"task": RECONCILE, "schedule": 60.0},
            # The console's counts of a large edition while it sends (worker/delivery/tallies.py):
            # a task of its own, so a long count never delays the reconcile tick.
            "live-counts": {"task": COUNT_LIVE_EDITIONS, "schedule": 60.0},
        },
    )
    if settings.bounce_mailbox is not None and settings.bounce_mailbox.get_secret_value() \
            or settings.bounce_maildir is not None:
        # Bounces arrive over minutes to days; every five minutes is prompt enough.
        app.conf.beat_schedule["bounces"] = {"task": PROCESS_BOUNCES, "schedule": 300.0}
    return app


@cache
def get_app() -> Celery:
    return create_app(load_settings())


def publisher(app: Celery | None = None, *, priority: int = FRESH_PRIORITY) -> Callable[[int, list[int]], None]:
    """publish(edition_id, ids): one send_batch message; ids only, never addresses."""
    def publish(edition_id: int, delivery_ids: list[int]) -> None:
        (app or get_app()).send_task(SEND_BATCH, args=[edition_id, list(delivery_ids)], priority=priority)

    return publish


class _ReconnectIsAWarning(logging.Filter):
    """Celery 5.x logs each failed reconnect to the broker ("consumer: Cannot connect to
    ...: Trying again in N seconds") at ERROR; a Redis restart is a wait, not an error.
    The attempts go on and are logged, at WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("consumer: Cannot connect to"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_broker_reconnects() -> None:
    """A broker reconnect says so in one WARNING line: no ERROR, nothing that reads as a
    traceback. Called in `celery worker`'s main process once its logging is set up
    (celeryd_after_setup)."""
    logging.getLogger("celery.worker.consumer.consumer").addFilter(_ReconnectIsAWarning())
    # Celery 5.1+ warns on every connection loss that a later version will cancel running
    # acks_late tasks (worker_cancel_long_running_tasks_on_connection_loss). We keep them
    # running: a batch finishes its rows, and the redelivered copy claims nothing twice.
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
                            category=CPendingDeprecationWarning)
