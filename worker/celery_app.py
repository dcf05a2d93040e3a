"""The Celery app and its beat schedule, built from settings when first asked for."""

from __future__ import annotations

from functools import cache

from celery import Celery
from celery.schedules import crontab

from worker.settings import Settings, load_settings

SEND_QUEUE = "send"
DAY_NUMBERS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def create_app(settings: Settings) -> Celery:
    app = Celery("worker", broker=settings.broker_url, include=["worker.tasks"])
    hour, minute = settings.send_time.split(":")
    # Redis re-delivers an unacknowledged task after visibility_timeout; every task
    # must finish (or be killed by its hard limit) well before that.
    visibility = settings.broker_visibility_timeout or settings.batch_lease_seconds * 2 + 60
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
                                  "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        task_routes={"worker.tasks.send_batch": {"queue": SEND_QUEUE}},
        task_default_queue="celery",
        timezone=settings.timezone,
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "weekly-send": {
                "task": "worker.tasks.weekly_send",
                "schedule": crontab(minute=int(minute), hour=int(hour),
                                    day_of_week=DAY_NUMBERS[settings.send_day], app=app),
            },
            "reconcile": {"task": "worker.tasks.reconcile", "schedule": 60.0},
        },
    )
    return app


@cache
def get_app() -> Celery:
    return create_app(load_settings())
