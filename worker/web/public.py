"""The mark of a readers' route (worker/web/app.py denies every unmarked route to readers)."""


def public(view):
    """Mark a readers' route; every route without the mark is the operator's."""
    view.public = True
    return view
