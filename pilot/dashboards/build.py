"""The operators' dashboards, generated from the plant config (tags, units, cells).

| uid | what |
|---|---|
| ``pilot-overview`` | line overview, ISA-101: one grey stat block per unit, the alarm priority's colour past a limit; tag quality; standing alarms; KPIs; links to every dashboard |
| ``pilot-adsorption`` | carousel: column outlet fronts (breakthrough curves), lag breakthrough vs limit, column roles, ΔP, flows, raffinate/eluate |
| ``pilot-extraction`` | cascade: stage pH profile, raffinate and strip assays, purities, flows PV/SP, organic inventory |
| ``pilot-electrolysis`` | per cell: voltage, current PV/SP, temperature PV/SP (window from the config), heater, salt and cathode Tb |
| ``pilot-alarms`` | standing alarms (last ``.STATE``, whatever the time range), journal, alarms raised per 10 min (ISA-18.2 lines) |
| ``pilot-model`` | model vs plant: measured vs estimated, innovations, NIS per unit |
| ``pilot-mpc`` | proposed vs applied setpoints, solve time, held ticks per controlled unit |

Every query is InfluxQL over the historian schema (``twin.points``): measurements
process / estimate / decision / alarm / kpi, tags ``tag``, ``unit``, ``quality``, ``session``, field
``value``; every query filters on the ``session`` variable (plant or training).
"""

from __future__ import annotations

from collections import defaultdict

from twin.points import APPLIED, EST, INNOV, NIS, PROPOSED

from . import limits as lim
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


def _unit_of(tags, names: list[str]) -> str:
    """The one Grafana unit of these tags: a panel axis carries one quantity."""
    units = {t.unit for t in tags if t.name in names}
    if len(units) > 1:
        raise ValueError(f"tags {names} mix units {sorted(units)} on one axis: split the panel")
    return grafana_unit(units.pop()) if units else ""


def _process(title: str, names: list[str], tags, w: int = 12, step: bool = False,
             description: str = "") -> dict:
    q = m.series_query("process", f'"tag" =~ {m.regex(names)}', "last" if step else "mean", gaps=True)
    return m.show_gaps(m.timeseries(title, [m.influxql(q, "A", m.GAP_ALIAS)], _unit_of(tags, names), w=w,
                                    step=step, description=description))


def _state(title: str, tags, w: int = 12, h: int = 6) -> dict:
    """State timeline of status tags with the names (and muted colours) of their codes."""
    names = [t.name for t in tags]
    p = m.state_timeline(title, [m.influxql(m.series_query(
        "process", f'"tag" =~ {m.regex(names)}', "last"), "A")], w=w, h=h)
    codes = lim.code_names(tags[0].description) or {0: "off", 1: "on"}
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["fieldConfig"]["defaults"]["unit"] = "none"
    p["fieldConfig"]["defaults"]["mappings"] = lim.value_mappings(codes, lim.state_palette(codes))
    return p


def _back() -> list[dict]:
    return [m.link("overview", "pilot-overview"), m.link("alarms", "pilot-alarms")]


UNIT_DASHBOARDS = {"adsorption": "pilot-adsorption", "extraction": "pilot-extraction",
                   "cell": "pilot-electrolysis"}


def _dashboard_of(unit: str) -> str | None:
    return next((uid for key, uid in UNIT_DASHBOARDS.items() if unit.startswith(key)), None)


# -- overview --------------------------------------------------------------------------------
def _unit_stat(config, unit: str, shown: list) -> dict:
    limits = {a.tag: a for a in config.control.alarms.limit}
    q = m.last_query("process", f'"tag" =~ {m.regex(t.name for t in shown)}')
    p = m.stat(unit, [m.influxql(q, "A")], w=12, h=2 + (len(shown) + 2) // 3,
               description="Last value of each measured tag. Grey: no alarm limit crossed; past a "
                           "limit: the colour of that alarm's priority (red 1, orange 2, amber 3, violet 4).")
    for t in shown:
        th = lim.alarm_thresholds(limits[t.name]) if t.name in limits else lim.grey_thresholds()
        m.override_thresholds(p, t.name, th, grafana_unit(t.unit))
    uid = _dashboard_of(unit)
    if uid:
        p["links"] = [{"title": f"{unit} dashboard", "url": f"/d/{uid}?${{__url_time_range}}&${{session:queryparam}}"}]
    return p


def overview(config) -> dict:
    panels = []
    for unit, tags in _by_unit(config).items():
        shown = [t for t in tags if t.kind in ("sensor", "analyser")]
        if shown:
            panels.append(_unit_stat(config, unit, shown))
    quality = m.stat("tag quality (points in range)", [m.influxql(
        f'SELECT count("value") FROM "process" WHERE {m.SESSION} AND $timeFilter GROUP BY "quality"',
        "A", "$tag_quality")], "none", w=8)
    m.override_thresholds(quality, "uncertain", _any_red(m.AMBER))
    m.override_thresholds(quality, "bad", _any_red(m.RED))
    active = m.stat("standing alarms", [m.influxql(
        f'SELECT count("state") FROM ({_STANDING_INNER}) WHERE "state" >= 1 AND "state" <= 3',
        "A", "standing")], "none", w=8, thresholds=_any_red(m.RED),
        description="Alarms active or unacknowledged now, whatever the time range.")
    active["links"] = [{"title": "alarm dashboard", "url": "/d/pilot-alarms?${session:queryparam}"}]
    kpis = m.stat("KPIs", [m.influxql(m.last_query("kpi", '"tag" =~ /^KPI\\./'), "A")], "none", w=8)
    links = [m.link(unit, uid) for unit, uid in UNIT_DASHBOARDS.items()] + [
        m.link(n, f"pilot-{n}") for n in ("alarms", "model", "mpc")]
    return m.dashboard("pilot-overview", f"{config.name}: line overview", [
        m.row("status"), quality, active, kpis, m.row("units"), *panels],
        "ISA-101 overview: grey plant, colour only for values past an alarm limit, bad quality and "
        "standing alarms.", links=links)


def _any_red(color: str) -> dict:
    return {"mode": "absolute", "steps": [{"color": m.DARK_GREY, "value": None}, {"color": color, "value": 1}]}


_UNITS = {"degC": "celsius", "%": "percent", "kPa": "pressurekpa", "A": "amp", "V": "volt", "kW": "kwatt",
          "L/h": "suffix: L/h", "mg/L": "suffix: mg/L", "wt%": "suffix: wt%", "1": "none", "pH": "suffix: pH",
          "mol/L": "suffix: mol/L", "L": "litre", "g/h": "suffix: g/h"}


def grafana_unit(unit: str) -> str:
    """The Grafana unit id of a config unit (a suffix for those Grafana has no id for)."""
    return _UNITS.get(unit, f"suffix: {unit}" if unit else "")


# -- unit dashboards -------------------------------------------------------------------------
def _limit_lines(config, panel: dict, name: str) -> dict:
    """The alarm limits of one tag as lines in their priority colours (the purity spec: L = 99.5 %)."""
    a = next((x for x in config.control.alarms.limit if x.tag == name), None)
    if a is None:
        return panel
    limits = sorted((v, p) for v, p in ((a.ll_eng, a.ll_priority), (a.l_eng, a.l_priority),
                                        (a.h_eng, a.h_priority), (a.hh_eng, a.hh_priority)) if v is not None)
    return m.threshold_lines(panel, [(None, "transparent")] + [(v, lim.PRIORITY_COLORS[p]) for v, p in limits])


def adsorption(config) -> dict:
    tags = _by_unit(config).get("adsorption", []) + [t for t in config.tags if t.name.startswith("ADS.")
                                                    and t.plant_unit != "adsorption"]
    cols = sorted({t.name.split(".")[1] for t in tags if t.name.startswith("ADS.COL")})
    panels = [m.row("loading fronts and breakthrough")]
    for col in cols:
        names = _names(tags, prefix=f"ADS.{col}.OUT.")
        if names:
            panels.append(_process(f"{col} outlet (front arriving)", names, tags, w=8))
    bt = _names(tags, contains="BREAKTHROUGH") + _names(tags, contains="BT_LIMIT")
    panels.append(_limit_lines(config, _process("lag breakthrough vs limit", bt, tags, w=12),
                               "ADS.LAG.BREAKTHROUGH"))
    panels.append(_state("column roles", [t for t in tags if t.name.endswith(".ROLE")], w=12, h=8))
    panels.append(m.row("hydraulics and assays"))
    panels.append(_limit_lines(config, _process("column ΔP", _names(tags, contains=".DP"), tags, w=8),
                               "ADS.COL1.DP"))
    panels.append(_process("flows PV / SP", _names(tags, contains="FLOW"), tags, w=8))
    panels.append(_process("acidity", _names(tags, contains="ACIDITY"), tags, w=8))
    panels.append(_process("raffinate", _names(tags, prefix="ADS.RAFF."), tags))
    panels.append(_process("eluate", _names(tags, prefix="ADS.ELUATE."), tags))
    return m.dashboard("pilot-adsorption", f"{config.name}: adsorption carousel", panels, links=_back())


def extraction(config) -> dict:
    tags = [t for t in config.tags if t.name.startswith("SX.")]
    stages = sorted(_names(tags, prefix="SX.STAGE"))
    profile = m.bars("stage pH profile (last value, stage order)", [m.influxql(
        m.last_query("process", f'"tag" =~ {m.regex(stages)}'), "A")], _unit_of(tags, stages), w=12)
    purity = _limit_lines(config, _process("purity (Tb spec line)", _names(tags, contains="PURITY"), tags, w=8),
                          "SX.TB_PURITY")
    inventory = _limit_lines(config, _process("organic inventory", _names(tags, contains="INVENTORY"), tags, w=8),
                             "SX.ORG.INVENTORY")
    panels = [m.row("stage profiles"), profile, _process("stage pH over time", stages, tags, w=12),
              m.row("assays and purity"),
              _process("raffinate", _names(tags, prefix="SX.RAFF.", unit="mg/L"), tags, w=8),
              _process("strip liquor", _names(tags, prefix="SX.STRIP.", unit="mg/L"), tags, w=8),
              purity, m.row("flows"),
              _process("organic entrained in the raffinate", _names(tags, prefix="SX.RAFF.", unit="ppm"), tags, w=8),
              _process("flows PV / SP", _names(tags, contains="FLOW"), tags, w=8),
              _process("acid setpoints", _names(tags, contains="ACID_SP"), tags, w=8, step=True),
              inventory]
    return m.dashboard("pilot-extraction", f"{config.name}: solvent-extraction cascade", panels, links=_back())


def _cell_panels(config, cell) -> list[dict]:
    pre = cell.name.upper() + "."
    tags = [t for t in config.tags if t.name.startswith(pre)]
    temp = _process(f"{cell.name} temperature PV / SP", _names(tags, contains="TEMP"), tags, w=8)
    m.threshold_lines(temp, [(None, m.RED), (cell.temperature_min_C, "transparent"),
                             (cell.temperature_max_C, m.RED)], "line+area")
    return [m.row(cell.name),
            _limit_lines(config, _process(f"{cell.name} voltage", _names(tags, contains="VOLTAGE"), tags, w=8),
                         pre + "VOLTAGE"),
            _process(f"{cell.name} current PV / SP", _names(tags, contains="CURRENT"), tags, w=8),
            temp,
            _process(f"{cell.name} heater", _names(tags, contains="HEATER"), tags, w=8),
            _process(f"{cell.name} Tb in salt and cathode", _names(tags, contains="_TB"), tags, w=8),
            _state(f"{cell.name} anode effect", [t for t in tags if "ANODE" in t.name], w=8, h=8)]


def electrolysis(config) -> dict:
    panels = m.filter_on_unit([p for cell in config.electrolysis.cells for p in _cell_panels(config, cell)], "cell")
    cells = [c.name for c in config.electrolysis.cells]
    return m.dashboard("pilot-electrolysis", f"{config.name}: electrolysis cells", panels,
                       variables=[m.custom_variable("cell", cells)], links=_back())


# -- alarms, model, MPC ----------------------------------------------------------------------
STANDING_LOOKBACK = "90d"  # standing alarms are read from the last state, not from the time range
_STANDING_INNER = (f'SELECT last("value") AS "state", last("text") AS "text" FROM "alarm" WHERE '
                   f'"tag" =~ /\\.STATE$/ AND {m.SESSION} AND time > now() - {STANDING_LOOKBACK} GROUP BY "tag"')
STANDING_QUERY = f'SELECT "state", "text" FROM ({_STANDING_INNER}) WHERE "state" >= 1 GROUP BY "tag"'
RATE_QUERY = (f'SELECT count("value") FROM "alarm" WHERE "value" = 1 AND "tag" !~ /\\.(STATE|PRIORITY)$/ '
              f'AND {m.SESSION} AND $timeFilter GROUP BY time(10m) fill(0)')


def _standing_table() -> dict:
    p = m.table("standing alarms (last state, whatever the time range)", [m.influxql(
        STANDING_QUERY, "A", "", "table")], w=12, h=10, transformations=[
        {"id": "extractFields", "options": {"source": "text", "format": "json", "replace": False,
                                            "keepTime": False}},
        {"id": "organize", "options": {"excludeByName": {"text": True, "Time": True},
                                       "renameByName": {"tag": "alarm", "by": "by (user)",
                                                        "until": "shelved until (plant s)"}}}])
    p["fieldConfig"]["defaults"]["unit"] = "none"
    p["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": "state"}, "properties": [
            {"id": "mappings", "value": lim.value_mappings(lim.STATE_NAMES, lim.STATE_COLORS)},
            {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
        {"matcher": {"id": "byName", "options": "priority"}, "properties": [
            {"id": "mappings", "value": lim.value_mappings(lim.PRIORITY_NAMES, lim.PRIORITY_COLORS)},
            {"id": "custom.cellOptions", "value": {"type": "color-background"}}]}]
    p["options"]["sortBy"] = [{"displayName": "priority", "desc": False}]
    return p


def alarms(config) -> dict:
    journal = m.table("alarm journal (1 raised, 0 cleared; .STATE: state code)", [m.influxql(
        f'SELECT "value" AS "value", "text" FROM "alarm" WHERE {m.SESSION} AND $timeFilter GROUP BY "tag", "unit" '
        'ORDER BY time DESC LIMIT 500', "A", "", "table")], w=12, h=10)
    rate = m.timeseries("alarms raised per 10 min (ISA-18.2: target ≤ 1, flood ≥ 10)", [m.influxql(
        RATE_QUERY, "A", "alarms raised")], "none", w=24, step=True)
    rate["fieldConfig"]["defaults"]["custom"].update({"drawStyle": "bars", "fillOpacity": 80})
    m.threshold_lines(rate, [(None, "transparent"), (1, m.AMBER), (10, m.RED)], "line+area")
    return m.dashboard("pilot-alarms", f"{config.name}: alarms", [_standing_table(), journal, rate],
                       links=_back())


def _estimated_units(config) -> dict[str, list[str]]:
    """Measured tags (sensor, analyser) per plant unit: what an estimator can explain."""
    out = {}
    for unit, tags in _by_unit(config).items():
        names = _names(tags, kinds=("sensor", "analyser"))
        if names and (unit in ("adsorption", "extraction") or unit.startswith("cell")):
            out[unit] = names
    return out


def _by_measure(config, names: list[str]) -> dict[str, list[str]]:
    """Tag names grouped by engineering unit: one panel (one axis) per quantity."""
    units = {t.name: t.unit for t in config.tags}
    out: dict[str, list[str]] = defaultdict(list)
    for n in names:
        out[units[n]].append(n)
    return dict(out)


def _per_measure(config, panel: dict, names: list[str]) -> dict:
    """One axis per quantity: a single unit on the panel, else a unit override (Grafana draws one
    axis per unit) for the series of each quantity."""
    groups = _by_measure(config, names)
    if len(groups) == 1:
        panel["fieldConfig"]["defaults"]["unit"] = grafana_unit(next(iter(groups)))
        return panel
    panel["fieldConfig"]["defaults"]["unit"] = "none"
    for eng, group in groups.items():
        panel["fieldConfig"]["overrides"].append({
            "matcher": {"id": "byRegexp", "options": f"^{m.regex(group)[2:-2]}(\\..*)?$"},
            "properties": [{"id": "unit", "value": grafana_unit(eng)}]})
    return panel


def _unit_model_panels(config, unit: str, names: list[str]) -> list[dict]:
    analysers = [t.name for t in config.tags if t.name in names and t.kind == "analyser"] or names
    mismatch = m.timeseries(f"{unit}: measured vs estimated", [
        m.influxql(m.series_query("process", f'"tag" =~ {m.regex(analysers)}'), "A", "$tag_tag"),
        m.influxql(m.series_query("estimate", f'"tag" =~ {m.regex(analysers, EST)}'), "B", "$tag_tag")], w=12)
    innov = m.timeseries(f"{unit}: innovations (measured − predicted)", [m.influxql(
        m.series_query("estimate", f'"tag" =~ {m.regex(names, INNOV)}'), "A")], w=6)
    nis = m.timeseries(f"{unit}: NIS", [m.influxql(
        m.series_query("estimate", f'"tag" =~ {m.regex(names, NIS)}'), "A")], "none", w=6)
    return [m.row(unit), _per_measure(config, mismatch, analysers), _per_measure(config, innov, names),
            m.threshold_lines(nis, [(None, "transparent"), (6.63, m.AMBER)])]  # χ²(1), 99 %


def model_vs_plant(config) -> dict:
    panels = m.filter_on_unit([p for unit, names in _estimated_units(config).items()
                               for p in _unit_model_panels(config, unit, names)], "unit")
    return m.dashboard("pilot-model", f"{config.name}: model vs plant", panels,
                       variables=[m.custom_variable("unit", list(_estimated_units(config)))], links=_back())


def controlled_units(config) -> dict[str, list[str]]:
    """Tags written by each loop of the guard (``control.guard.loops``): what the MPC proposes and applies."""
    return {lp.name: list(lp.writes) for lp in config.control.guard.loops}


def mpc(config) -> dict:
    panels = [m.row("solver")]
    units = controlled_units(config)
    panels.append(m.timeseries("solve time", [m.influxql(m.series_query(
        "decision", '"tag" =~ /^MPC\\..+\\.SOLVE_MS$/', "max"), "A")], "ms", w=12))
    held = m.timeseries("held ticks (MPC result not applied)", [m.influxql(m.series_query(
        "decision", '"tag" =~ /^MPC\\..+\\.HELD$/', "sum"), "A")], "none", w=12)
    held["fieldConfig"]["defaults"]["custom"].update({"drawStyle": "bars", "fillOpacity": 80})
    panels.append(held)
    for unit, names in units.items():
        panels += [m.row(unit), _per_measure(config, m.timeseries(f"{unit}: proposed vs applied setpoints", [
            m.influxql(m.series_query("decision", f'"tag" =~ {m.regex(names, PROPOSED)}'), "A"),
            m.influxql(m.series_query("decision", f'"tag" =~ {m.regex(names, APPLIED)}'), "B"),
        ], w=24, step=True), names)]
    return m.dashboard("pilot-mpc", f"{config.name}: MPC", panels, links=_back())


BUILDERS = {"overview": overview, "adsorption": adsorption, "extraction": extraction,
            "electrolysis": electrolysis, "alarms": alarms, "model": model_vs_plant, "mpc": mpc}


def build_dashboards(config) -> dict[str, dict]:
    """File stem -> dashboard JSON for the given plant config."""
    return {name: fn(config) for name, fn in BUILDERS.items()}
