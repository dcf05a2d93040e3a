"""The operator's dashboard, /operator: active readers per region; the list's weeks
(sign-ups, confirmations, unsubscribes, bounces, complaints) as charts and as a table;
the editions created last and those in flight, with their bounce and complaint rates
against the thresholds `newsletter status` uses; held editions, with the forms that
approve or discard them; the sources' health; and the form that undoes a bounce.

The numbers are the read model's (worker/console/dashboard.py); this module only renders.
Operator-only like every route not marked public (guard.py). The forms post elsewhere,
under the console's form rules (forms.py: our own origin, a token signed for that action
and that operator): approve and discard to worker/web/console_editions.py, the CLI's own
functions of worker/editions/; the reactivation to worker/web/console_readers.py. Every title,
reason, error, region and URL on the page is data, escaped by Jinja's autoescape and by
the charts (charts.py).
"""

from __future__ import annotations

from flask import Blueprint

from worker.console.dashboard import MEASURES, THRESHOLDS, dashboard
from worker.web.charts import bar_chart
from worker.web.forms import form_token
from worker.web.shared import page, web

# A label under every fourth bar of a week chart: a month apart, and they do not overlap.
WEEK_LABEL_EVERY = 4
# The regions charted (the table lists all of them): beyond these the bars are too thin to read.
CHART_REGIONS = 20

bp = Blueprint("operator", __name__)


@bp.get("/operator")
def operator_page():
    context = web()
    shown = dashboard(context.engine, region_names=context.settings.region_names, wider=context.settings.wider)
    charts = [(heading, bar_chart(f"{heading} per week, last {len(shown.weeks)} weeks",
                                  [(w.label, w.counts[measure]) for w in shown.weeks], label_every=WEEK_LABEL_EVERY))
              for measure, heading, _ in MEASURES]
    regions_chart = bar_chart("Active readers per region",
                              [(r.code, r.active) for r in shown.regions[:CHART_REGIONS]]) if shown.regions else None
    return page("operator.html", board=shown, measures=MEASURES, charts=charts, regions_chart=regions_chart,
                chart_regions=CHART_REGIONS, thresholds=THRESHOLDS, token=form_token, can_send=bool(context.secret))
