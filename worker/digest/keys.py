"""Names that travel between layers, each with one spelling."""

from __future__ import annotations

from dataclasses import dataclass

from worker.regions import parse_regions


@dataclass(frozen=True)
class RegionSet:
    """A subscriber's regions, in their order. Stored as `"RU UA"` (subscribers,
    deliveries and variants rows, which group by it); written `"RU-UA"` in URLs."""

    codes: tuple[str, ...]

    @classmethod
    def stored(cls, text: str) -> RegionSet:
        """From a stored value, which was validated when it was written."""
        return cls(tuple(text.split()))

    @classmethod
    def from_key(cls, key: str) -> RegionSet:
        """From a URL's `RU-UA`, checked: ValueError (RegionError) for anything else."""
        return cls(tuple(parse_regions(key.replace("-", " "))))

    @property
    def text(self) -> str:
        return " ".join(self.codes)

    @property
    def key(self) -> str:
        return "-".join(self.codes)


def weekly_edition_key(week: str) -> str:
    """`weekly-2025-W05`: the scheduled edition of an ISO week."""
    return f"weekly-{week}"
