"""The library details our adapters rely on. If a library changes underneath, these fail
loudly here, not as a hung worker or a wrongly inlined digest in production."""

import inspect
import smtplib
import sys
from importlib.metadata import version

import premailer


def test_smtplib_reads_replies_through_self_file():
    # worker/delivery/smtp.py wraps `self.file` to give each reply a deadline.
    source = inspect.getsource(smtplib.SMTP.getreply)
    assert "if self.file is None:" in source and "self.file.readline(" in source, (
        f"smtplib.SMTP.getreply changed in Python {sys.version.split()[0]}: revisit _ReplyDeadline")


def test_premailer_parses_each_stylesheet_through_parse_style_rules():
    # worker/render/inline.py keeps the parsed rules between variants by overriding this method.
    method = getattr(premailer.Premailer, "_parse_style_rules", None)
    assert method is not None, f"premailer {version('premailer')} has no _parse_style_rules: revisit _Premailer"
    assert list(inspect.signature(method).parameters) == ["self", "css_body", "ruleset_index"]
    assert "self._parse_style_rules(" in inspect.getsource(premailer.Premailer.transform)



def test_celery_on_redis_hands_out_a_lower_priority_number_first(redis_url, settings):
    """worker/celery_app.py: recovered batches (priority 0) overtake fresh ones (6) on the real
    broker: kombu keeps one list per priority step and takes from the first that is not empty."""
    from worker.celery_app import FRESH_PRIORITY, RECOVERED_PRIORITY, SEND_QUEUE, create_app, publisher

    app = create_app(settings.model_copy(update={"broker_url": redis_url}))
    publisher(app)(1, [1, 2])
    publisher(app)(1, [3, 4])
    publisher(app, priority=RECOVERED_PRIORITY)(1, [5, 6])
    assert (RECOVERED_PRIORITY, FRESH_PRIORITY) == (0, 6)
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        first = [channel.basic_get(SEND_QUEUE, no_ack=True) for _ in range(3)]
    assert [m.decode()[0][1] for m in first] == [[5, 6], [1, 2], [3, 4]], f"kombu {version('kombu')}"


def test_celery_logs_a_failed_broker_reconnect_where_the_worker_quiets_it():
    # worker/celery_app.py quiet_broker_reconnects: the logger and message start it filters.
    from celery.worker.consumer import consumer

    assert consumer.logger.name == "celery.worker.consumer.consumer"
    assert consumer.CONNECTION_ERROR.startswith("consumer: Cannot connect to")
    assert consumer.CANCEL_TASKS_BY_DEFAULT.strip().startswith("In Celery 5.1 we introduced an optional breaking change")
