"""The console's SVG charts: labels are data, counts get whole-number scales, an empty
chart still has a scale, and every bar says its value to a screen reader."""

import re

from worker.web.charts import bar_chart


def _axis(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end">([^<]*)<', svg)


def test_labels_and_titles_are_escaped_data():
    svg = str(bar_chart('<script>alert("t")</script>', [("<b>W1</b>", 3), ('"&', 1)]))
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg and "&lt;b&gt;W1&lt;/b&gt;: 3</title>" in svg and "&#x27;" not in svg


def test_counts_get_whole_numbers_on_the_axis_and_an_empty_chart_a_scale():
    assert _axis(str(bar_chart("t", [("a", 25), ("b", 3)]))) == ["0", "20", "40"]
    assert _axis(str(bar_chart("t", [("a", 1)]))) == ["0", "1", "2"]
    assert _axis(str(bar_chart("t", [("a", 0), ("b", 0)]))) == ["0", "1", "2"]
    assert _axis(str(bar_chart("t", []))) == ["0", "1", "2"]
    assert _axis(str(bar_chart("t", [("a", 0.3)]))) == ["0", "0.5", "1"]


def test_every_bar_has_its_value_and_only_every_nth_label_is_drawn():
    svg = str(bar_chart("weeks", [(f"W{n}", n) for n in range(8)], label_every=4))
    assert len(re.findall(r"<rect ", svg)) == 8 and "<title>W7: 7</title>" in svg
    assert re.findall(r'text-anchor="middle">([^<]*)<', svg) == ["W0", "W4"]
    assert 'role="img"' in svg and 'aria-label="weeks"' in svg
