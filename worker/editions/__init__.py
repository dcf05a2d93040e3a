"""The operator's actions on an edition, behind one door: find the window, plan the edition
or reuse the one that exists, approve or discard a held one, hand it to the broker or run
it in this process, follow it, dry-run it, send test copies, retry its failures, pause
and resume it, decide its unknown rows, and say where it stands.

The command line (worker/cli/sending.py, send.py, deliveries.py), the console (worker/web/)
and the task shells (worker/tasks.py) call these and print or render what comes back:
nothing here prints, and every result is a small frozen dataclass. A refusal each caller
words for its own reader (not held, released by someone else a moment ago) is a value;
misuse (no such edition to retry, an address that is not one) raises UsageError, as the
delivery modules do.

The broker is reached only from here (`hand_out`): the Celery app is built on first use
and kept, one per broker URL, and Celery is imported then, not before, so the web app,
which calls this module, loads no Celery module until an operator approves an edition.
"""

from worker.delivery.status import EditionStatus, Progress
from worker.editions.handout import BrokerUnreachable, deliver_batch, follow, hand_out, reconcile, recover, run_inline
from worker.editions.plans import (
    Decision,
    Plan,
    Release,
    Released,
    Resume,
    Resumed,
    Target,
    count_failed,
    original_key,
    pause,
    plan_or_reuse,
    release,
    resolve_edition,
    resolve_window,
    resume,
)
from worker.editions.standing import (
    FullStatus,
    approval_sends,
    find,
    full_status,
    guard_view,
    in_view,
    recent,
    recipients,
    require,
    status,
    window_story_count,
)
from worker.editions.trials import DryRun, DrySet, TestCopy, dry_run, send_test_copies
from worker.editions.unknown import Decided, decide_unknown

__all__ = [
    "EditionStatus", "Progress", "Target", "Plan", "Decision", "Release", "Released", "DryRun", "DrySet",
    "TestCopy", "Resume", "Resumed", "FullStatus", "BrokerUnreachable", "Decided",
    "resolve_window", "resolve_edition", "original_key", "plan_or_reuse", "release", "hand_out", "run_inline",
    "follow", "dry_run", "send_test_copies", "count_failed", "pause", "resume", "status", "full_status",
    "recent", "in_view", "find", "require", "approval_sends", "guard_view", "recipients", "window_story_count",
    "deliver_batch", "reconcile", "recover", "decide_unknown",
]
