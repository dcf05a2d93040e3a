"""Feeds and JSON in; validated, sanitised stories out."""

from worker.ingest.importer import ImportReport, Rejection, import_sources

__all__ = ["ImportReport", "Rejection", "import_sources"]
