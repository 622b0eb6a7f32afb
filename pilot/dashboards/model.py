"""Grafana dashboard JSON as plain dicts: a handful of panel builders and a grid packer.

Plain dicts (see docs/historian.md "Grafana as code"): the JSON model is the contract Grafana
reads, the builders below are the only place that knows its shape, and ``tests/test_dashboards.py``
validates every generated file (a round trip through grafana-foundation-sdk's typed 11.6 models
that drops nothing, ids, grid, datasources, units, queries against the real InfluxDB).

Colours follow ISA-101 (high-performance HMI): the plant is grey, colour means abnormal:
grey for normal values, the priority colour of the crossed alarm limit beyond it (``limits``),
trends in muted shades of one hue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

DATASOURCE = {"type": "influxdb", "uid": "pilot-influxdb"}
GREY, DARK_GREY, AMBER, RED, BLUE = "#8c8c8c", "#5a5a5a", "#e0a800", "#d8262e", "#3274d9"
SCHEMA_VERSION = 39
GRID_WIDTH = 24
TREND_COLOR = {"mode": "shades", "fixedColor": "#6e8fa8"}  # ISA-101: muted trends
SESSION = '"session" =~ /${session:raw}/'  # the session variable: plant (no session) or training


def with_session(query: str) -> str:
    """The query restricted to the ``session`` variable's points (before each ``$timeFilter``),
    unless it already is."""
    return query if SESSION in query else query.replace(" AND $timeFilter", f" AND {SESSION} AND $timeFilter")


def filter_on_unit(panels: Sequence[dict], variable: str) -> list[dict]:
    """Restrict every target to the plant units (historian tag ``unit``) picked in ``variable``."""
    cond = f'"unit" =~ /^${{{variable}:regex}}$/ AND $timeFilter'
    for p in panels:
        for t in p.get("targets", []):
            t["query"] = t["query"].replace("$timeFilter", cond)
    return list(panels)


def session_variable() -> dict:
    """``session``: the plant's own points (no session tag) or those of training sessions."""
    options = [{"text": "plant", "value": "^$", "selected": True}, {"text": "training", "value": ".+",
                                                                    "selected": False}]
    return {"type": "custom", "name": "session", "label": "session", "query": "^$,.+",
            "current": {"text": "plant", "value": "^$"}, "options": options, "hide": 0,
            "multi": False, "includeAll": False}


def custom_variable(name: str, values: Sequence[str]) -> dict:
    """A multi-value variable over fixed values (units, cells), "All" by default."""
    return {"type": "custom", "name": name, "label": name, "query": ",".join(values),
            "current": {"text": ["All"], "value": ["$__all"]}, "hide": 0, "multi": True,
            "includeAll": True, "options": [{"text": v, "value": v, "selected": False} for v in values]}


def link(title: str, uid: str) -> dict:
    """A dashboard link to ``/d/<uid>`` keeping the time range and the variables."""
    return {"type": "link", "title": title, "url": f"/d/{uid}", "targetBlank": False,
            "keepTime": True, "includeVars": True, "asDropdown": False, "icon": "dashboard", "tags": []}


def threshold_lines(panel: dict, steps: Sequence[tuple[float | None, str]], style: str = "line") -> dict:
    """Absolute thresholds drawn on a time series (spec and limit lines)."""
    defaults = panel["fieldConfig"]["defaults"]
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}
    defaults["custom"]["thresholdsStyle"] = {"mode": style}
    return panel


def influxql(query: str, ref: str, alias: str = "$tag_tag", fmt: str = "time_series") -> dict:
    """A raw InfluxQL target (Grafana's InfluxDB data source, query language InfluxQL), filtered on
    the ``session`` variable (see ``with_session``)."""
    return {"refId": ref, "datasource": dict(DATASOURCE), "query": with_session(query), "rawQuery": True,
            "resultFormat": fmt, "alias": alias}


def regex(names: Iterable[str], suffix: str = "") -> str:
    """InfluxQL regex matching exactly these tag values: /^(A\\.B|C\\.D)<suffix>$/."""
    alts = "|".join(re.escape(n) for n in names)
    return f"/^({alts}){re.escape(suffix)}$/"


GAP_ALIAS = "$tag_tag $col"  # "<TAG> value" and "<TAG> status": see show_gaps


def series_query(measurement: str, where: str, agg: str = "mean", gaps: bool = False) -> str:
    """Time series per tag, aggregated to Grafana's interval. ``fill(none)``: an interval without
    a new sample is no point (the PLC reports changes only: a steady value is not a gap).
    ``gaps``: also ``last("status")``, so an interval holding only Bad marks (no ``value`` field)
    is a row whose value is null: with ``spanNulls: false`` the line breaks there, from the last
    good value before an outage to the first after it."""
    fields = f'{agg}("value") AS "value", last("status") AS "status"' if gaps else f'{agg}("value")'
    return (f'SELECT {fields} FROM "{measurement}" WHERE {where} AND $timeFilter '
            f'GROUP BY time($__interval), "tag" fill(none)')


def show_gaps(panel: dict) -> dict:
    """For targets built with ``series_query(gaps=True)`` and ``GAP_ALIAS``: the status series are
    hidden (they only carry the nulls) and "<TAG> value" is shown as "<TAG>"."""
    panel["fieldConfig"]["overrides"].append({
        "matcher": {"id": "byRegexp", "options": "/ status$/"},
        "properties": [{"id": "custom.hideFrom", "value": {"legend": True, "tooltip": True, "viz": True}}]})
    panel.setdefault("transformations", []).append(
        {"id": "renameByRegex", "options": {"regex": "^(.*) value$", "renamePattern": "$1"}})
    return panel


def last_query(measurement: str, where: str) -> str:
    """The last value of each tag in the time range."""
    return f'SELECT last("value") FROM "{measurement}" WHERE {where} AND $timeFilter GROUP BY "tag"'


def _panel(kind: str, title: str, targets: Sequence[dict], w: int, h: int, unit: str = "",
           description: str = "") -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {"type": kind, "title": title, "description": description, "datasource": dict(DATASOURCE),
            "targets": list(targets), "gridPos": {"x": 0, "y": 0, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit, "color": {"mode": "palette-classic"}},
                            "overrides": []},
            "options": {}}


def timeseries(title: str, targets: Sequence[dict], unit: str = "", w: int = 12, h: int = 8,
               description: str = "", step: bool = False) -> dict:
    p = _panel("timeseries", title, targets, w, h, unit, description)
    p["fieldConfig"]["defaults"]["color"] = dict(TREND_COLOR)
    p["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "showPoints": "never", "spanNulls": False,
                                              "lineInterpolation": "stepAfter" if step else "linear"}
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}}
    return p


def stat(title: str, targets: Sequence[dict], unit: str = "", w: int = 6, h: int = 5,
         thresholds: dict | None = None, description: str = "") -> dict:
    p = _panel("stat", title, targets, w, h, unit, description)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["fieldConfig"]["defaults"]["thresholds"] = thresholds or {
        "mode": "absolute", "steps": [{"color": DARK_GREY, "value": None}]}
    p["options"] = {"colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                    "justifyMode": "auto", "orientation": "horizontal",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return p


def override_thresholds(panel: dict, name: str, thresholds: dict, unit: str = "") -> None:
    props = [{"id": "thresholds", "value": thresholds}]
    if unit:
        props.append({"id": "unit", "value": unit})
    panel["fieldConfig"]["overrides"].append({"matcher": {"id": "byName", "options": name}, "properties": props})


def bars(title: str, targets: Sequence[dict], unit: str = "", w: int = 12, h: int = 8,
         description: str = "") -> dict:
    """Bar gauge of the last value per series (e.g. a stage profile), grey bars."""
    p = _panel("bargauge", title, targets, w, h, unit, description)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "fixed", "fixedColor": GREY}
    p["options"] = {"orientation": "vertical", "displayMode": "basic", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return p


def table(title: str, targets: Sequence[dict], w: int = 12, h: int = 8, description: str = "",
          transformations: list | None = None) -> dict:
    p = _panel("table", title, targets, w, h, "", description)
    p["options"] = {"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]}
    p["transformations"] = transformations or []
    return p


def state_timeline(title: str, targets: Sequence[dict], w: int = 24, h: int = 6,
                   description: str = "") -> dict:
    p = _panel("state-timeline", title, targets, w, h, "", description)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "continuous-GrYlRd"}
    p["options"] = {"mergeValues": True, "showValue": "auto", "rowHeight": 0.8}
    return p


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": 0, "w": GRID_WIDTH, "h": 1}}


def layout(panels: Sequence[dict]) -> list[dict]:
    """Place panels left to right, wrapping at 24 columns; a row starts a new line. Assigns ids."""
    x = y = line_h = 0
    out = []
    for pid, p in enumerate(panels, start=1):
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > GRID_WIDTH:
            x, y, line_h = 0, y + line_h, 0
        g["x"], g["y"] = x, y
        x += g["w"]
        line_h = max(line_h, g["h"])
        if p["type"] == "row":
            x, y, line_h = 0, y + g["h"], 0
        out.append({**p, "id": pid})
    return out


def dashboard(uid: str, title: str, panels: Sequence[dict], description: str = "",
              time_from: str = "now-6h", variables: Sequence[dict] = (),
              links: Sequence[dict] = ()) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["pilot-line"],
        "timezone": "browser", "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
        "graphTooltip": 1, "refresh": "10s", "time": {"from": time_from, "to": "now"},
        "templating": {"list": [session_variable(), *variables]}, "links": list(links),
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
             "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
             "type": "dashboard"},
            {"datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": False,
             "iconColor": RED, "name": "Alarm transitions",
             "target": {"type": "tags", "tags": ["pilot-alarm"], "matchAny": True, "limit": 500}},
        ]},
        "panels": layout(panels),
    }
