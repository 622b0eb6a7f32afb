"""Dashboards as code: well-formed Grafana JSON, provisioning wired, every query answered by the
real InfluxDB after a short simulated run."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pilot.dashboards import build_dashboards, write_provisioning
from pilot.dashboards.model import DATASOURCE, GRID_WIDTH
from pilot.dashboards.provisioning import DASHBOARDS_MOUNT
from pilot.historian.base import MEASUREMENTS
from pilot.historian.feed import simulated_run
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot_config import load_config
from twin.points import FIELD

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
        assert FIELD in read and read <= {FIELD, "status"}, (name, q)
        for alts, _suffix in re.findall(r'"tag" =~ /\^\(([^)]*)\)([^$]*)\$/', q):
            names = {a.replace("\\", "") for a in alts.split("|")}
            assert names and names <= tag_names, (name, p["title"], names - tag_names)
            referenced |= names
    measured = {t.name for t in config.tags if t.kind in ("sensor", "analyser")}
    assert measured <= referenced  # every measured tag is on some panel


def test_isa101_overview_grey_unless_abnormal(dashboards, config):
    over = dashboards["overview"]
    unit_stats = [p for p in _panels(over) if p["fieldConfig"]["overrides"] and p["title"] not in
                  ("tag quality (points in range)",)]
    assert unit_stats
    for p in unit_stats:
        for o in p["fieldConfig"]["overrides"]:
            steps = o["properties"][0]["value"]["steps"]
            tag = config.tag(o["matcher"]["options"])
            inside = [s for s in steps if s["value"] is not None and tag.low < s["value"] < tag.high]
            assert steps[0]["color"] != "#8c8c8c" and any(s["color"] == "#5a5a5a" for s in inside)


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


# -- against the real InfluxDB -----------------------------------------------------------------


def _grafana_macros(q: str) -> str:
    return q.replace("$timeFilter", "time > now() - 3h").replace("$__interval", "1m")


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
        empty = []
        for name, p, t in _targets(dashboards):
            results = sink.query(_grafana_macros(t["query"]))
            series = results[0].get("series", [])
            if not any(s["values"] for s in series):
                empty.append(f"{name}/{p['title']}/{t['refId']}: {t['query']}")
        assert not empty, "queries without data:\n" + "\n".join(empty)
    finally:
        sink.query(f'DROP DATABASE "{db}"', method="POST")
        sink.close()
