"""Dashboards as code: well-formed Grafana JSON, provisioning wired, every query answered by the
real InfluxDB after a short simulated run."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pilot.app import simulate
from pilot.dashboards import build_dashboards, write_provisioning
from pilot.dashboards.alerting import alerting
from pilot.dashboards.build import grafana_unit
from pilot.dashboards.limits import (
    DARK_GREY,
    PRIORITY_COLORS,
    PRIORITY_NAMES,
    STATE_NAMES,
    code_names,
    threshold_color,
)
from pilot.dashboards.model import DATASOURCE, GRID_WIDTH
from pilot.dashboards.provisioning import DASHBOARDS_MOUNT
from pilot.historian.base import MEASUREMENTS
from pilot.historian.feed import simulated_run
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.sqlite import history_path
from pilot_config import load_config
from twin.points import FIELD
from twin.signals import Point

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def dashboards(config):
    return build_dashboards(config)


def _panels(dash):
    return [p for p in dash["panels"] if p["type"] != "row"]


def _targets(dashboards):
    for name, dash in dashboards.items():
        for p in _panels(dash):
            for t in p["targets"]:
                yield name, p, t


def test_panel_ids_unique_and_grid_does_not_overlap(dashboards):
    assert set(dashboards) == {"overview", "adsorption", "extraction", "electrolysis", "alarms", "model", "mpc"}
    for name, dash in dashboards.items():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: dict[tuple[int, int], int] = {}
        for p in dash["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= GRID_WIDTH and g["w"] > 0 and g["h"] > 0, (name, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps panel {cells[(x, y)]}"
                    cells[(x, y)] = p["id"]
        assert dash["uid"].startswith("pilot-") and dash["schemaVersion"] >= 36


def test_every_target_has_datasource_and_valid_refids(dashboards):
    for name, dash in dashboards.items():
        assert _panels(dash), name
        for p in _panels(dash):
            assert p["datasource"] == DATASOURCE and p["targets"], (name, p["title"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
            for t in p["targets"]:
                assert t["datasource"] == DATASOURCE and t["rawQuery"] is True and t["query"].startswith("SELECT")


def test_every_panel_references_measurement_and_field_written(dashboards, config):
    tag_names = {t.name for t in config.tags}
    referenced = set()
    for name, p, t in _targets(dashboards):
        q = t["query"]
        measurements = re.findall(r'FROM "(\w+)"', q)
        assert measurements and set(measurements) <= set(MEASUREMENTS), (name, q)
        fields = re.findall(r'(?:mean|last|max|min|sum|count)\("(\w+)"\)|SELECT "(\w+)"', q)
        read = {a or b for a, b in fields}  # the value, and on process panels the status that marks Bad points
        assert read & {FIELD, "state"} and read <= {FIELD, "status", "state", "text"}, (name, q)
        for alts, _suffix in re.findall(r'"tag" =~ /\^\(([^)]*)\)([^$]*)\$/', q):
            names = {a.replace("\\", "") for a in alts.split("|")}
            assert names and names <= tag_names, (name, p["title"], names - tag_names)
            referenced |= names
    measured = {t.name for t in config.tags if t.kind in ("sensor", "analyser")}
    assert measured <= referenced  # every measured tag is on some panel


def test_provisioning_files_point_at_dashboards(tmp_path, config, dashboards):
    written = write_provisioning(tmp_path, config)
    ds = yaml.safe_load((tmp_path / "provisioning/datasources/influxdb.yaml").read_text())["datasources"][0]
    assert ds["uid"] == DATASOURCE["uid"] and ds["type"] == "influxdb"
    provider = yaml.safe_load((tmp_path / "provisioning/dashboards/pilot.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    files = sorted(p.name for p in written if p.suffix == ".json")
    assert files == sorted(f"{n}.json" for n in dashboards)
    # the shipped files are the generator's output, and compose mounts them where the provider looks
    for f in files:
        shipped = DEPLOY / "grafana/dashboards" / f
        assert json.loads(shipped.read_text()) == json.loads((tmp_path / "dashboards" / f).read_text()), \
            f"{shipped} is stale: run `pilot historian grafana --out deploy/grafana`"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.endswith(":" + DASHBOARDS_MOUNT + ":ro") and "grafana/dashboards" in m for m in mounts)
    assert any("grafana/provisioning" in m for m in mounts)
    shipped_alerting = DEPLOY / "grafana/provisioning/alerting/pilot.yaml"
    assert yaml.safe_load(shipped_alerting.read_text()) == yaml.safe_load(
        (tmp_path / "provisioning/alerting/pilot.yaml").read_text()), f"{shipped_alerting} is stale"


# -- against the real InfluxDB -----------------------------------------------------------------


def _grafana_macros(q: str, time_filter: str = "time > now() - 3h") -> str:
    """Grafana's macros as Grafana expands them, the session variable on the plant (no session)."""
    return (q.replace("$timeFilter", time_filter).replace("$__interval", "1m")
            .replace("${session:raw}", "^$").replace("${cell:regex}", "(cell1|cell2)")
            .replace("${unit:regex}", ".+"))


def test_every_panel_query_returns_data_after_a_short_run(influx, config, dashboards):
    db = f"dash_{uuid.uuid4().hex[:8]}"
    sink = Influx1Sink(url=influx, database=db)
    sink.create_database()
    try:
        rec = Recorder(Influx1Sink(url=influx, database=db)).start()
        written = 0
        for points in simulated_run(config, 2 * 3600, epoch_s=time.time() - 2 * 3600 - 60):
            rec.record_many(points)
            written += len(points)
        assert rec.drain(30)
        rec.close()
        assert rec.stats.written == written and rec.stats.spooled == 0
        answered: dict[str, bool] = {}
        for name, p, t in _targets(dashboards):
            if '"alarm"' in t["query"]:
                continue  # alarm-state queries: tested below on alarm points written with the schema
            series = sink.query(_grafana_macros(t["query"]))[0].get("series", [])
            key = f"{name}/{p['title']}"
            answered[key] = answered.get(key, False) or any(s["values"] for s in series)
        empty = [k for k, ok in answered.items() if not ok]
        assert len(answered) > 50 and not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        sink.query(f'DROP DATABASE "{db}"', method="POST")
        sink.close()


# -- colours, units, mappings, links -----------------------------------------------------------


def _overrides(dash):
    for p in _panels(dash):
        for o in p["fieldConfig"]["overrides"]:
            if o["matcher"]["id"] == "byName" and o["properties"][0]["id"] == "thresholds":
                yield p, o["matcher"]["options"], o["properties"][0]["value"], o["properties"]


@pytest.fixture(scope="module")
def normal_run_last_values(tmp_path_factory, config):
    """Last process value of every tag after two plant hours of `pilot simulate` (open loop)."""
    out = tmp_path_factory.mktemp("sim")
    simulate(config, 2 * 3600, out, make_plots=False)
    db = sqlite3.connect(history_path(out))
    try:
        return {t: v for t, v in db.execute("SELECT tag, value FROM points WHERE measurement = 'process' "
                                            "AND value IS NOT NULL ORDER BY time_s")}
    finally:
        db.close()


def test_overview_grey_in_a_normal_run_and_priority_colour_past_a_limit(dashboards, config,
                                                                        normal_run_last_values):
    limits = {a.tag: a for a in config.control.alarms.limit}
    measured = {t.name for t in config.tags if t.kind in ("sensor", "analyser")}
    shown = {name: th for p, name, th, _ in _overrides(dashboards["overview"]) if name in measured}
    assert set(shown) == measured
    for name, th in shown.items():
        assert threshold_color(th, normal_run_last_values[name]) == DARK_GREY, (name, normal_run_last_values[name])
    checked = 0
    for tag, a in limits.items():
        if tag not in shown:
            continue
        for limit, prio, sign in ((a.hh_eng, a.hh_priority, 1), (a.h_eng, a.h_priority, 1),
                                  (a.l_eng, a.l_priority, -1), (a.ll_eng, a.ll_priority, -1)):
            if limit is None:
                continue
            inner = [v for v, s in ((a.h_eng, 1), (a.hh_eng, 1), (a.l_eng, -1), (a.ll_eng, -1))
                     if v is not None and s == sign and sign * (v - limit) > 0]
            past = limit + sign * 1e-6 if not inner else (limit + min(inner, key=lambda v: abs(v - limit))) / 2
            assert threshold_color(shown[tag], past) == PRIORITY_COLORS[prio], (tag, limit, past)
            assert threshold_color(shown[tag], limit - sign * 1e-6) != PRIORITY_COLORS[prio] or \
                any(threshold_color(shown[tag], limit - sign * 1e-6) == PRIORITY_COLORS[q]
                    for q in (a.h_priority, a.l_priority) if q == prio)
            checked += 1
    assert checked >= 20
    purity = config.tag("SX.TB_PURITY")
    assert threshold_color(shown[purity.name], 99.88) == DARK_GREY
    assert threshold_color(shown[purity.name], 99.2) == PRIORITY_COLORS[limits[purity.name].l_priority]


def _tags_of(q: str) -> set[str]:
    return {a.replace("\\", "") for alts, _ in re.findall(r'"tag" =~ /\^\(([^)]*)\)([^$]*)\$/', q)
            for a in alts.split("|")}


def test_every_panel_has_a_unit_and_one_quantity_per_axis(dashboards, config):
    units = {t.name: t.unit for t in config.tags}
    for name, dash in dashboards.items():
        for p in _panels(dash):
            if p["type"] == "table":
                continue
            assert p["fieldConfig"]["defaults"]["unit"] or all(
                any(pr["id"] == "unit" for pr in props) for _, _, _, props in _overrides({"panels": [p]})), \
                (name, p["title"])
            if p["type"] in ("timeseries", "bargauge"):
                if ".NIS$" in p["targets"][0]["query"].replace("\\", ""):
                    assert p["fieldConfig"]["defaults"]["unit"] == "none"  # normalised: no unit
                    continue
                tags = {n for t in p["targets"] for n in _tags_of(t["query"])}
                measures = {units[n] for n in tags}
                if len(measures) == 1:
                    assert p["fieldConfig"]["defaults"]["unit"] == grafana_unit(measures.pop()), (name, p["title"])
                    continue
                per_series = [(re.compile(o["matcher"]["options"]), o["properties"][0]["value"])
                              for o in p["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byRegexp"
                              and o["properties"][0]["id"] == "unit"]
                for n in tags:  # each series (tag, tag.EST, tag.PROPOSED ...) gets its tag's unit: its own axis
                    for shown in (n, n + ".EST", n + ".INNOV", n + ".PROPOSED"):
                        got = [u for rx, u in per_series if rx.match(shown)]
                        assert got == [grafana_unit(units[n])], (name, p["title"], shown, got)


def test_state_tags_have_value_mappings_and_purity_a_spec_line(dashboards, config):
    mapped = {}
    for dash in dashboards.values():
        for p in _panels(dash):
            if p["type"] == "state-timeline":
                opts = p["fieldConfig"]["defaults"]["mappings"][0]["options"]
                for n in _tags_of(p["targets"][0]["query"]):
                    mapped[n] = {int(k): v["text"] for k, v in opts.items()}
    for t in config.tags:
        if t.kind == "status" and t.plant_unit in ("adsorption",) or "ANODE" in t.name:
            assert t.name in mapped and set(mapped[t.name]) >= set(code_names(t.description)), t.name
    assert mapped["ADS.COL1.ROLE"][5] == "regenerate"
    purity = next(p for p in _panels(dashboards["extraction"]) if p["title"].startswith("purity"))
    steps = purity["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert any(s["value"] == 99.5 and s["color"] != "transparent" for s in steps)
    assert purity["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_session_variable_and_links_between_overview_and_units(dashboards):
    over = {link["url"] for link in dashboards["overview"]["links"]}
    for name, dash in dashboards.items():
        assert dash["templating"]["list"][0]["name"] == "session"
        for _, p, t in _targets({name: dash}):
            assert "${session:raw}" in t["query"], (name, p["title"])
        if name != "overview":
            assert f"/d/{dash['uid']}" in over
            assert "/d/pilot-overview" in {link["url"] for link in dash["links"]}
    assert [v["name"] for v in dashboards["electrolysis"]["templating"]["list"]] == ["session", "cell"]
    assert [v["name"] for v in dashboards["model"]["templating"]["list"]] == ["session", "unit"]
    for name, var in (("electrolysis", "cell"), ("model", "unit")):
        for _, p, t in _targets({name: dashboards[name]}):
            assert f'"unit" =~ /^${{{var}:regex}}$/' in t["query"], (name, p["title"])
    unit_links = [p["links"][0]["url"] for p in _panels(dashboards["overview"]) if p.get("links")]
    assert any(u.startswith("/d/pilot-adsorption") for u in unit_links)


# -- the alarm state in the real InfluxDB --------------------------------------------------------


def _state_points(alarm_id: str, t: float, code: int, prio: int, session: str = "") -> list[Point]:
    text = json.dumps({"state": STATE_NAMES[code], "priority": prio, "by": "", "until": None})
    return [Point("alarm", f"{alarm_id}.STATE", "cell1", float(code), t, session=session, text=text),
            Point("alarm", f"{alarm_id}.PRIORITY", "cell1", float(prio), t, session=session)]


def test_standing_alarms_whatever_the_time_range_and_alert_rule(influx, dashboards, config):
    db = f"dash_{uuid.uuid4().hex[:8]}"
    sink = Influx1Sink(url=influx, database=db)
    sink.create_database()
    end = time.time()
    raised = [Point("alarm", "CELL1.TEMP.HH", "cell1", 1.0, end - 8 * 3600)]  # 8 h ago, still standing
    points = raised + _state_points("CELL1.TEMP.HH", end - 8 * 3600, 1, 1)
    points += [Point("alarm", "TANK.LEVEL.HI", "tank", 1.0, end - 3 * 3600)] + _state_points(
        "TANK.LEVEL.HI", end - 3 * 3600, 1, 3) + _state_points("TANK.LEVEL.HI", end - 2 * 3600, 0, 3)
    points += _state_points("SX.TB_PURITY.LO", end - 7 * 3600, 4, 3)  # shelved
    points += _state_points("CELL2.TEMP.HH", end - 60, 1, 1, session="drill")  # training only
    points += [Point("alarm", "DIST.TEMP.HI", "dist", 1.0, end - 1800 + i) for i in range(12)]
    try:
        rec = Recorder(Influx1Sink(url=influx, database=db)).start()
        rec.record_many(points)
        assert rec.drain(30)
        rec.close()
        last_6h = "time > now() - 6h"
        alarms = dashboards["alarms"]
        standing = next(p for p in _panels(alarms) if p["title"].startswith("standing"))
        series = sink.query(_grafana_macros(standing["targets"][0]["query"], last_6h))[0]["series"]
        rows = {s["tags"]["tag"]: dict(zip(s["columns"], s["values"][-1])) for s in series}
        assert set(rows) == {"CELL1.TEMP.HH.STATE", "SX.TB_PURITY.LO.STATE"}
        assert STATE_NAMES[int(rows["CELL1.TEMP.HH.STATE"]["state"])] == "active unacknowledged"
        assert json.loads(rows["CELL1.TEMP.HH.STATE"]["text"])["priority"] == 1
        assert int(rows["SX.TB_PURITY.LO.STATE"]["state"]) == 4
        mapping = standing["fieldConfig"]["overrides"][1]["properties"][0]["value"][0]["options"]
        assert mapping["1"]["color"] == PRIORITY_COLORS[1] and mapping["1"]["text"] == PRIORITY_NAMES[1]
        count = next(p for p in _panels(dashboards["overview"]) if p["title"] == "standing alarms")
        assert sink.query(_grafana_macros(count["targets"][0]["query"], last_6h))[0]["series"][0]["values"][0][1] == 1
        rate = next(p for p in _panels(alarms) if p["title"].startswith("alarms raised"))
        counts = [v[1] for v in sink.query(_grafana_macros(rate["targets"][0]["query"], last_6h))[0]["series"][0]["values"]]
        assert max(counts) == 12 and sum(counts) == 13
        lines = {s["value"]: s["color"] for s in rate["fieldConfig"]["defaults"]["thresholds"]["steps"]}
        assert lines[1] != "transparent" and lines[10] != "transparent"
        rule = alerting(config)["groups"][0]["rules"][0]
        q = rule["data"][0]["model"]["query"].replace("$timeFilter", "time > now() - 90d")
        fired = {s["tags"]["tag"]: s["values"][-1][1] for s in sink.query(q)[0]["series"]}
        assert fired == {"CELL1.TEMP.HH.STATE": 1.0}  # within_range 0.5..2.5 of the rule: firing
    finally:
        sink.query(f'DROP DATABASE "{db}"', method="POST")
        sink.close()


# -- typed models: grafana-foundation-sdk of the compose Grafana (11.6) ---------------------------


def _dropped(ours, back, path: str = "") -> list[str]:
    """Keys and values of ``ours`` that the typed round trip ``back`` lost or changed."""
    if isinstance(ours, dict):
        return [d for k, v in ours.items() for d in
                ([f"{path}.{k} dropped"] if k not in back else _dropped(v, back[k], f"{path}.{k}"))]
    if isinstance(ours, list):
        if not isinstance(back, list) or len(ours) != len(back):
            return [f"{path}: list changed"]
        return [d for i, (a, b) in enumerate(zip(ours, back)) for d in _dropped(a, b, f"{path}[{i}]")]
    return [] if ours == back else [f"{path}: {ours!r} -> {back!r}"]


def _round_trip(dash: dict) -> dict:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and field config decode into the panel's typed model
    return json.loads(json.dumps(Dashboard.from_json(json.loads(json.dumps(dash))), cls=JSONEncoder))


def test_typed_round_trip_drops_nothing(dashboards):
    for name, dash in dashboards.items():
        assert _dropped(dash, _round_trip(dash)) == [], name


def test_typed_round_trip_catches_bar_gauge_options_on_a_time_series(dashboards):
    dash = json.loads(json.dumps(dashboards["alarms"]))
    ts = next(p for p in _panels(dash) if p["type"] == "timeseries")
    ts["options"].update({"displayMode": "basic", "showUnfilled": True})
    lost = _dropped(dash, _round_trip(dash))
    assert any(d.endswith("options.displayMode dropped") for d in lost), lost


def test_rendering_colours_tiles_by_the_dashboard_thresholds(dashboards, config, tmp_path):
    """docs/img's rendering reads the overview's own overrides: a tag past its limit takes its
    priority colour, a standing alarm appears with its state, a cleared one does not."""
    from pilot.dashboards.render import (
        _tiles,
        last_values,
        render_alarms,
        render_overview,
    )

    th = {tag: t for _, rows in _tiles(dashboards["overview"]) for tag, t, _ in rows}
    a = next(a for a in config.control.alarms.limit if a.hh_eng is not None and a.tag in th)
    pts = [Point("process", a.tag, "", a.hh_eng + abs(a.hh_eng) * 0.01 + 1.0, 10.0),
           *_state_points("X.HI", 5.0, 1, 2), *_state_points("Y.HI", 5.0, 0, 3)]
    values, states = last_values(pts)
    assert set(states) == {"X.HI", "Y.HI"} and states["X.HI"][0] == 1
    assert threshold_color(th[a.tag], values[a.tag]) == PRIORITY_COLORS[a.hh_priority]
    for path in (render_overview(dashboards["overview"], values, tmp_path / "o.png", "t"),
                 render_alarms(states, tmp_path / "a.png", "t")):
        assert path.stat().st_size > 10_000
