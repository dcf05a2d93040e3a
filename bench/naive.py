"""Baseline (c): the obvious design. One Celery task per subscriber, Jinja2 and
premailer for every message, a new SMTP connection every time.

Started by bench/run.py as `celery -A bench.naive worker`; nothing here is used by the product.
"""

from __future__ import annotations

import os
import smtplib

from celery import Celery

app = Celery("naive", broker=os.environ.get("NEWSLETTER_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                worker_prefetch_multiplier=1, task_default_queue="naive")


@app.task(name="naive.send_one")
def send_one(edition_id: int, delivery_id: int) -> None:
    from sqlalchemy import select, update

    from worker.delivery.pipeline import renderer_for
    from worker.delivery.plan import get_edition
    from worker.render.compose import Addressee, compose
    from worker.render.digest import render_variant
    from worker.settings import load_settings
    from worker.store.db import create_db_engine, session_scope
    from worker.store.models import Delivery, Subscriber

    settings = load_settings()
    engine = create_db_engine(settings.database_url)
    with session_scope(engine) as session:
        row = session.execute(select(Delivery.regions, Subscriber.email, Subscriber.name, Subscriber.id,
                                     Subscriber.link_key)
                              .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                              .where(Delivery.id == delivery_id)).one()
    edition = get_edition(engine, edition_id)
    renderer = renderer_for(engine, settings, edition)
    selection = renderer.selection(tuple(row.regions.split()))
    # premailer for every message, and the reference EmailMessage path.
    variant = render_variant(selection=selection, window=renderer._window, edition_key=edition.key,
                             settings=settings)
    composed = compose(variant, Addressee(row.email, row.name, row.id, row.link_key), settings=settings,
                       secret=settings.require_secret_key(), reference=True)
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        smtp.sendmail(settings.sender.addr_spec, [composed.envelope_to], composed.data)
    with session_scope(engine) as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(state="sent"))
    engine.dispose()
