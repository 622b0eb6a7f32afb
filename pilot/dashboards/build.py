"""The operators' dashboards, generated from the plant config (tags, units, cells).

| uid | what |
|---|---|
| ``pilot-overview`` | line overview, ISA-101: one grey stat block per unit, colour only when abnormal; tag quality; active alarms; KPIs |
| ``pilot-adsorption`` | carousel: column outlet fronts (breakthrough curves), lag breakthrough vs limit, column roles, ΔP, flows, raffinate/eluate |
| ``pilot-extraction`` | cascade: stage pH profile, raffinate and strip assays, purities, flows PV/SP, organic inventory |
| ``pilot-electrolysis`` | per cell: voltage, current PV/SP, temperature PV/SP (window from the config), heater, salt and cathode Tb |
| ``pilot-alarms`` | active alarms, alarm journal, alarms raised per 10 min |
| ``pilot-model`` | model vs plant: measured vs estimated, innovations, NIS per unit |
| ``pilot-mpc`` | proposed vs applied setpoints, solve time, held ticks per controlled unit |

Every query is InfluxQL over the historian schema (``twin.points``): measurements
process / estimate / decision / alarm / kpi, tags ``tag``, ``unit``, ``quality``, field ``value``.
"""

from __future__ import annotations

from collections import defaultdict

from twin.points import APPLIED, EST, INNOV, NIS, PROPOSED

from . import model as m

MEASURED = ("sensor", "analyser", "status")


def _by_unit(config) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for t in config.tags:
        out[t.plant_unit].append(t)
    return dict(out)


def _names(tags, *, kinds=None, contains: str = "", prefix: str = "", unit: str | None = None) -> list[str]:
    return [t.name for t in tags if (kinds is None or t.kind in kinds) and contains in t.name
            and t.name.startswith(prefix) and (unit is None or t.unit == unit)]


def _process(title: str, names: list[str], unit: str = "", w: int = 12, step: bool = False,
             description: str = "") -> dict:
    q = m.series_query("process", f'"tag" =~ {m.regex(names)}', "last" if step else "mean", gaps=True)
    return m.show_gaps(m.timeseries(title, [m.influxql(q, "A", m.GAP_ALIAS)], unit, w=w, step=step,
                                    description=description))


# -- overview --------------------------------------------------------------------------------
def overview(config) -> dict:
    panels = []
    for unit, tags in _by_unit(config).items():
        shown = [t for t in tags if t.kind in ("sensor", "analyser")]
        if not shown:
            continue
        q = m.last_query("process", f'"tag" =~ {m.regex(t.name for t in shown)}')
        p = m.stat(unit, [m.influxql(q, "A")], w=12, h=2 + (len(shown) + 2) // 3,
                   description="Last value of each measured tag. Grey: normal; amber: outer 5 % "
                               "of the instrument range; red: outside it.")
        for t in shown:
            m.override_thresholds(p, t.name, m.range_thresholds(t.low, t.high), _grafana_unit(t.unit))
        panels.append(p)
    quality = m.stat("tag quality (points in range)", [m.influxql(
        'SELECT count("value") FROM "process" WHERE $timeFilter GROUP BY "quality"', "A", "$tag_quality")], w=8)
    m.override_thresholds(quality, "uncertain", _any_red(m.AMBER))
    m.override_thresholds(quality, "bad", _any_red(m.RED))
    active = m.stat("active alarms", [m.influxql(
        'SELECT sum("value") FROM (SELECT last("value") AS "value" FROM "alarm" WHERE $timeFilter '
        'GROUP BY "tag")', "A", "active")], w=8, thresholds=_any_red(m.RED))
    kpis = m.stat("KPIs", [m.influxql(m.last_query("kpi", '"tag" =~ /^KPI\\./'), "A")], w=8)
    return m.dashboard("pilot-overview", f"{config.name}: line overview", [
        m.row("status"), quality, active, kpis, m.row("units"), *panels],
        "ISA-101 overview: grey plant, colour only for abnormal values, bad quality and active alarms.")


def _any_red(color: str) -> dict:
    return {"mode": "absolute", "steps": [{"color": m.DARK_GREY, "value": None}, {"color": color, "value": 1}]}


_UNITS = {"degC": "celsius", "%": "percent", "kPa": "pressurekpa", "A": "amp", "V": "volt", "kW": "kwatt",
          "L/h": "L/h", "mg/L": "mg/L", "wt%": "percent", "1": "none"}


def _grafana_unit(unit: str) -> str:
    return _UNITS.get(unit, unit)


# -- unit dashboards -------------------------------------------------------------------------
def adsorption(config) -> dict:
    tags = _by_unit(config).get("adsorption", []) + [t for t in config.tags if t.name.startswith("ADS.")
                                                    and t.plant_unit != "adsorption"]
    cols = sorted({t.name.split(".")[1] for t in tags if t.name.startswith("ADS.COL")})
    panels = [m.row("loading fronts and breakthrough")]
    for col in cols:
        names = _names(tags, prefix=f"ADS.{col}.OUT.")
        if names:
            panels.append(_process(f"{col} outlet (front arriving)", names, "mg/L", w=8))
    bt = _names(tags, contains="BREAKTHROUGH") + _names(tags, contains="BT_LIMIT")
    panels.append(_process("lag breakthrough vs limit", bt, "percent", w=12))
    panels.append(m.state_timeline("column roles", [m.influxql(m.series_query(
        "process", f'"tag" =~ {m.regex(_names(tags, contains=".ROLE"))}', "last"), "A")], w=12, h=8))
    panels.append(m.row("hydraulics and assays"))
    panels.append(_process("column ΔP", _names(tags, contains=".DP"), "pressurekpa", w=8))
    panels.append(_process("flows PV / SP", _names(tags, contains="FLOW"), "L/h", w=8))
    panels.append(_process("acidity", _names(tags, contains="ACIDITY"), "", w=8))
    panels.append(_process("raffinate", _names(tags, prefix="ADS.RAFF."), "mg/L"))
    panels.append(_process("eluate", _names(tags, prefix="ADS.ELUATE."), "mg/L"))
    return m.dashboard("pilot-adsorption", f"{config.name}: adsorption carousel", panels)


def extraction(config) -> dict:
    tags = [t for t in config.tags if t.name.startswith("SX.")]
    stages = sorted(_names(tags, prefix="SX.STAGE"))
    profile = m.bars("stage pH profile (last value, stage order)", [m.influxql(
        m.last_query("process", f'"tag" =~ {m.regex(stages)}'), "A")], "", w=12)
    panels = [m.row("stage profiles"), profile, _process("stage pH over time", stages, "", w=12),
              m.row("assays and purity"),
              _process("raffinate", _names(tags, prefix="SX.RAFF."), "mg/L", w=8),
              _process("strip liquor", _names(tags, prefix="SX.STRIP.", unit="mg/L"), "mg/L", w=8),
              _process("purity", _names(tags, contains="PURITY"), "percent", w=8),
              m.row("flows"),
              _process("flows PV / SP", _names(tags, contains="FLOW"), "L/h", w=8),
              _process("acid setpoints", _names(tags, contains="ACID_SP"), "", w=8, step=True),
              _process("organic inventory", _names(tags, contains="INVENTORY"), "", w=8)]
    return m.dashboard("pilot-extraction", f"{config.name}: solvent-extraction cascade", panels)


def electrolysis(config) -> dict:
    panels = []
    for cell in config.electrolysis.cells:
        pre = cell.name.upper() + "."
        tags = [t for t in config.tags if t.name.startswith(pre)]
        temp = _process(f"{cell.name} temperature PV / SP", _names(tags, contains="TEMP"), "celsius", w=8)
        temp["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": [
            {"color": m.RED, "value": None}, {"color": "transparent", "value": cell.temperature_min_C},
            {"color": m.RED, "value": cell.temperature_max_C}]}
        temp["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] = {"mode": "line+area"}
        panels += [m.row(cell.name),
                   _process(f"{cell.name} voltage", _names(tags, contains="VOLTAGE"), "volt", w=8),
                   _process(f"{cell.name} current PV / SP", _names(tags, contains="CURRENT"), "amp", w=8),
                   temp,
                   _process(f"{cell.name} heater", _names(tags, contains="HEATER"), "kwatt", w=8),
                   _process(f"{cell.name} Tb in salt and cathode", _names(tags, contains="_TB"), "percent", w=8),
                   _process(f"{cell.name} anode effect", _names(tags, contains="ANODE"), "", w=8, step=True)]
    return m.dashboard("pilot-electrolysis", f"{config.name}: electrolysis cells", panels)


# -- alarms, model, MPC ----------------------------------------------------------------------
def alarms(config) -> dict:
    active = m.table("active alarms", [m.influxql(
        'SELECT last("value") AS "active" FROM "alarm" WHERE $timeFilter GROUP BY "tag", "unit"', "A",
        "", "table")], w=10, h=10, transformations=[
        {"id": "filterByValue", "options": {"type": "include", "match": "any", "filters": [
            {"fieldName": "active", "config": {"id": "equal", "options": {"value": 1}}}]}}])
    journal = m.table("alarm journal (transitions: 1 raised, 0 cleared)", [m.influxql(
        'SELECT "value" AS "raised" FROM "alarm" WHERE $timeFilter GROUP BY "tag", "unit" '
        'ORDER BY time DESC LIMIT 500', "A", "", "table")], w=14, h=10)
    rate = m.bars("alarms raised per 10 min", [m.influxql(
        'SELECT count("value") FROM "alarm" WHERE "value" > 0 AND $timeFilter GROUP BY time(10m) fill(0)',
        "A", "alarms")], "", w=24)
    rate["type"] = "timeseries"
    rate["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "bars", "fillOpacity": 80}
    return m.dashboard("pilot-alarms", f"{config.name}: alarms", [active, journal, rate])


def _estimated_units(config) -> dict[str, list[str]]:
    """Measured tags (sensor, analyser) per plant unit: what an estimator can explain."""
    out = {}
    for unit, tags in _by_unit(config).items():
        names = _names(tags, kinds=("sensor", "analyser"))
        if names and (unit in ("adsorption", "extraction") or unit.startswith("cell")):
            out[unit] = names
    return out


def model_vs_plant(config) -> dict:
    panels = []
    for unit, names in _estimated_units(config).items():
        analysers = [t.name for t in config.tags if t.name in names and t.kind == "analyser"] or names
        mismatch = m.timeseries(f"{unit}: measured vs estimated", [
            m.influxql(m.series_query("process", f'"tag" =~ {m.regex(analysers)}'), "A", "$tag_tag"),
            m.influxql(m.series_query("estimate", f'"tag" =~ {m.regex(analysers, EST)}'), "B", "$tag_tag")],
            w=12)
        innov = m.timeseries(f"{unit}: innovations (measured − predicted)", [m.influxql(
            m.series_query("estimate", f'"tag" =~ {m.regex(names, INNOV)}'), "A")], w=6)
        nis = m.timeseries(f"{unit}: NIS", [m.influxql(
            m.series_query("estimate", f'"tag" =~ {m.regex(names, NIS)}'), "A")], w=6)
        nis["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "transparent", "value": None}, {"color": m.AMBER, "value": 6.63}]}  # χ²(1), 99 %
        nis["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] = {"mode": "line"}
        panels += [m.row(unit), mismatch, innov, nis]
    return m.dashboard("pilot-model", f"{config.name}: model vs plant", panels)


def controlled_units(config) -> dict[str, list[str]]:
    """Writable tags (actuators, setpoints) per plant unit: what the MPC proposes and applies."""
    out: dict[str, list[str]] = {}
    for unit, tags in _by_unit(config).items():
        names = [t.name for t in tags if t.writable]
        if names and unit != "plc":
            out[unit] = names
    return out


def mpc(config) -> dict:
    panels = [m.row("solver")]
    units = controlled_units(config)
    panels.append(m.timeseries("solve time", [m.influxql(m.series_query(
        "decision", '"tag" =~ /^MPC\\..+\\.SOLVE_MS$/', "max"), "A")], "ms", w=12))
    held = m.timeseries("held ticks (MPC result not applied)", [m.influxql(m.series_query(
        "decision", '"tag" =~ /^MPC\\..+\\.HELD$/', "sum"), "A")], "", w=12)
    held["fieldConfig"]["defaults"]["custom"].update({"drawStyle": "bars", "fillOpacity": 80})
    panels.append(held)
    for unit, names in units.items():
        panels += [m.row(unit), m.timeseries(f"{unit}: proposed vs applied setpoints", [
            m.influxql(m.series_query("decision", f'"tag" =~ {m.regex(names, PROPOSED)}'), "A"),
            m.influxql(m.series_query("decision", f'"tag" =~ {m.regex(names, APPLIED)}'), "B"),
        ], w=24, step=True)]
    return m.dashboard("pilot-mpc", f"{config.name}: MPC", panels)


BUILDERS = {"overview": overview, "adsorption": adsorption, "extraction": extraction,
            "electrolysis": electrolysis, "alarms": alarms, "model": model_vs_plant, "mpc": mpc}


def build_dashboards(config) -> dict[str, dict]:
    """File stem -> dashboard JSON for the given plant config."""
    return {name: fn(config) for name, fn in BUILDERS.items()}
