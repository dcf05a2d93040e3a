"""Tables, engine and sessions, migrations."""

from worker.store.db import create_db_engine, session_scope, upgrade_schema
from worker.store.models import (
    Base,
    Delivery,
    DeliveryState,
    Edition,
    EditionState,
    Story,
    StoryRegion,
    Subscriber,
    SubscriberStatus,
)

__all__ = [
    "Base",
    "Delivery",
    "DeliveryState",
    "Edition",
    "EditionState",
    "Story",
    "StoryRegion",
    "Subscriber",
    "SubscriberStatus",
    "create_db_engine",
    "session_scope",
    "upgrade_schema",
]
