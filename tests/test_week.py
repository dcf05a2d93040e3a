"""ISO week windows in a local zone, and the selection rule."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.digest import (
    StoryItem,
    custom_window,
    parse_week,
    previous_week,
    select_sections,
    week_of,
    week_window,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_a_week_is_monday_to_monday_local_time():
    window = week_window("2025-W05", BERLIN)
    assert window.start == datetime(2025, 1, 26, 23, 0, tzinfo=UTC)
    assert window.end == datetime(2025, 2, 2, 23, 0, tzinfo=UTC)
    assert (window.first_day, window.last_day) == (date(2025, 1, 27), date(2025, 2, 2))


def test_sunday_2359_local_is_in_the_week_and_monday_0000_is_not():
    window = week_window("2025-W05", BERLIN)
    sunday_late = datetime(2025, 2, 2, 23, 59, tzinfo=BERLIN)
    monday = datetime(2025, 2, 3, 0, 0, tzinfo=BERLIN)
    assert window.contains(sunday_late.astimezone(UTC))
    assert not window.contains(monday.astimezone(UTC))
    assert window.contains(datetime(2025, 1, 27, 0, 0, tzinfo=BERLIN).astimezone(UTC))
    assert not window.contains(datetime(2025, 1, 26, 23, 59, tzinfo=BERLIN).astimezone(UTC))


def test_a_week_across_a_dst_change_is_167_or_169_hours():
    spring = week_window("2025-W13", BERLIN)  # clocks go forward on Sunday 30 March
    autumn = week_window("2025-W43", BERLIN)  # and back on Sunday 26 October
    assert spring.end - spring.start == timedelta(hours=167)
    assert autumn.end - autumn.start == timedelta(hours=169)
    assert spring.end == datetime(2025, 3, 30, 22, 0, tzinfo=UTC)


def test_year_boundaries():
    w01 = week_window("2025-W01", ZoneInfo("UTC"))
    assert w01.start == datetime(2024, 12, 30, tzinfo=UTC)
    w53 = week_window("2026-W53", ZoneInfo("UTC"))
    assert (w53.first_day, w53.end) == (date(2026, 12, 28), datetime(2027, 1, 4, tzinfo=UTC))
    assert week_of(datetime(2027, 1, 3, 23, 0, tzinfo=UTC), ZoneInfo("UTC")) == "2026-W53"
    assert week_of(datetime(2024, 12, 30, 0, 0, tzinfo=UTC), ZoneInfo("UTC")) == "2025-W01"


@pytest.mark.parametrize(("text", "message"), [
    ("2025-W53", "2025-W53 does not exist: 2025 has no ISO week 53"),
    ("2025-W00", "2025-W00 does not exist: 2025 has no ISO week 0"),
    ("2025-5", "week must look like 2025-W05, got '2025-5'"),
    ("9999-W52", "9999-W52: the year must be between 1900 and 9998"),
    ("0001-W01", "0001-W01: the year must be between 1900 and 9998"),
])
def test_bad_weeks_say_why(text, message):
    with pytest.raises(ValueError) as err:
        parse_week(text)
    assert str(err.value) == message


def test_previous_week_is_the_one_that_just_ended():
    monday_morning = datetime(2025, 2, 3, 7, 0, tzinfo=BERLIN)
    assert previous_week(monday_morning, BERLIN) == "2025-W05"
    # 00:30 on Monday in Tokyo is still Sunday in UTC: the zone decides.
    tokyo = ZoneInfo("Asia/Tokyo")
    assert previous_week(datetime(2025, 2, 2, 15, 30, tzinfo=UTC), tokyo) == "2025-W05"


def _story(n, regions, day):
    return StoryItem(id=n, guid=f"g{n}", url=f"https://x.example/{n}", title=f"S{n}", summary_html="",
                     summary_text="", published_at=datetime(2025, 1, day, 12, tzinfo=UTC), source="s",
                     image_url=None, regions=tuple(regions))


def test_selection_caps_dedupes_and_follows_the_subscribers_order():
    stories = [
        _story(1, ["RU"], 27), _story(2, ["RU", "UA"], 28), _story(3, ["UA"], 29),
        _story(4, ["RU"], 30), _story(5, ["RU"], 31), _story(6, ["DE"], 29),
    ]
    ru_first = select_sections(stories, ["RU", "UA"], per_region=2)
    assert [(s.region, [x.id for x in s.stories]) for s in ru_first.sections] == [
        ("RU", [5, 4]), ("UA", [3, 2])
    ]
    ua_first = select_sections(stories, ["UA", "RU"], per_region=5)
    assert [(s.region, [x.id for x in s.stories]) for s in ua_first.sections] == [
        ("UA", [3, 2]), ("RU", [5, 4, 1])
    ]
    # A story already shown earlier never takes a later section's slot.
    assert [x.id for x in select_sections(stories, ["UA", "RU"], per_region=1).sections[1].stories] == [5]


def test_empty_sections_are_dropped_and_no_stories_is_empty():
    stories = [_story(1, ["RU"], 27)]
    selection = select_sections(stories, ["JP", "RU"], per_region=5)
    assert [s.region for s in selection.sections] == ["RU"] and not selection.is_empty
    assert select_sections(stories, ["JP"], per_region=5).is_empty


def test_equal_times_are_ordered_by_id_for_stable_digests():
    a, b = _story(2, ["RU"], 27), _story(1, ["RU"], 27)
    assert [x.id for x in select_sections([a, b], ["RU"], per_region=5).sections[0].stories] == [1, 2]


@pytest.mark.parametrize(("window", "zone"), [
    (week_window("2025-W05", BERLIN), BERLIN),
    (week_window("2025-W13", BERLIN), BERLIN),   # the spring DST change, on the last Sunday
    (week_window("2025-W43", ZoneInfo("America/New_York")), ZoneInfo("America/New_York")),
    (week_window("2025-W05", ZoneInfo("Pacific/Kiritimati")), ZoneInfo("Pacific/Kiritimati")),  # UTC+14
    (custom_window(date(2025, 3, 28), date(2025, 3, 31), BERLIN), BERLIN),
])
def test_an_editions_window_read_back_has_the_days_it_was_planned_with(window, zone):
    """Window.of_edition is the one arithmetic for a stored window (the pipeline's render,
    `send --edition`, approval): its days are those week_window and custom_window gave."""
    from types import SimpleNamespace

    from worker.digest import Window

    stored = SimpleNamespace(window_start=window.start, window_end=window.end, label=window.label)
    assert Window.of_edition(stored, zone) == window
    in_utc = Window.of_edition(stored)
    assert (in_utc.start, in_utc.end, in_utc.label) == (window.start, window.end, window.label)
    assert in_utc.first_day == window.start.date()
