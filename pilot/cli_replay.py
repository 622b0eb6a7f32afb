"""``pilot replay SOURCE --from T --to T``: a recorded window through the estimators and MPCs as
they are now (or with changed settings), compared with the recorded decisions (``pilot.replay``).

SOURCE: a run folder (its ``history.sqlite``), a store file, or an InfluxDB URL (database from
``--database``, else ``PILOT_INFLUX_DATABASE``; credentials and precision from the historian
settings, docs/historian.md). ``--set PATH=VALUE`` changes the config given (``--config``,
``$PILOT_CONFIG`` or the shipped line) at a dotted path, or the loop's MPC and estimator tuning:
``mpc.cascade.<field>`` (``CascadeMpcConfig``), ``mpc.cell.<field>`` (``CellMpcConfig``),
``estimator.<field>`` (``EstimatorConfig``).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from .cli_common import config_path_or_env, fail, load_or_fail

err = Console(stderr=True)
out = Console()
LOOP_TUNING = ("mpc.cascade", "mpc.cell", "estimator")
MODES = ("manual", "advisory", "auto")


def parse_time(text: str, what: str) -> float:
    """ISO date-time (UTC unless it says otherwise) -> Unix seconds; a duration (2h, 90min) or
    plain seconds -> plant seconds of a simulated record."""
    from .durations import parse_duration

    s = text.strip()
    if "T" in s or (s.count("-") >= 2 and ":" in s):
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what} {text!r}: not an ISO date-time (2026-12-01T08:00:00Z)") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    try:
        if float(s) >= 0:
            return float(s)
    except ValueError:
        pass
    try:
        return parse_duration(s)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}; or an ISO date-time (2026-12-01T08:00:00Z)") from None


def parse_sets(items: list[str]) -> dict[str, Any]:
    sets = {}
    for item in items:
        path, eq, value = item.partition("=")
        if not eq or not path.strip():
            raise ValueError(f"--set {item!r}: use PATH=VALUE (mpc.cascade.move_weight=0.1)")
        sets[path.strip()] = yaml.safe_load(value)
    return sets


def tuning(sets: dict[str, Any]) -> dict[str, Any]:
    """The ``ControlLoop`` options of the ``mpc.*`` / ``estimator.*`` settings (validated)."""
    from controllers.estimation import EstimatorConfig
    from controllers.loop import CASCADE_MARGIN_PCT
    from controllers.mpc_cascade import CascadeMpcConfig
    from controllers.mpc_cell import CellMpcConfig

    bases = {"mpc.cascade": ("cascade_mpc", CascadeMpcConfig(margin_pct=CASCADE_MARGIN_PCT)),
             "mpc.cell": ("cell_mpc", CellMpcConfig()), "estimator": ("estimator", EstimatorConfig())}
    options = {}
    for prefix, (option, base) in bases.items():
        mine = {k[len(prefix) + 1:]: v for k, v in sets.items() if k.startswith(prefix + ".")}
        unknown = sorted(set(mine) - set(type(base).model_fields))
        if unknown:
            raise ValueError(f"--set {prefix}.{unknown[0]}: no such field; allowed: "
                             f"{', '.join(sorted(type(base).model_fields))}")
        if mine:
            try:
                options[option] = type(base).model_validate({**base.model_dump(), **mine})
            except ValidationError as exc:
                e = exc.errors(include_url=False)[0]
                raise ValueError(f"--set {prefix}.{e['loc'][0]} = {e.get('input')!r}: {e['msg']}") from None
    return options


def plant_config(config, sets: dict[str, Any], file: str):
    """The config with the plant settings of ``sets`` (dotted paths, validated as a whole)."""
    from pilot_config.plant import PilotLineConfig

    from .sweep_spec import apply_overrides

    plant = {k: v for k, v in sets.items() if not k.startswith(tuple(p + "." for p in LOOP_TUNING))}
    if not plant:
        return config
    try:
        return PilotLineConfig.model_validate(apply_overrides(config.model_dump(), plant))
    except KeyError as exc:
        raise ValueError(f"{file}: --set: {exc.args[0]}") from None
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        raise ValueError(f"{file}: --set {'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: "
                         f"{e['msg']}") from None


def lookback_s(config) -> float:
    """How far before the first tick to read so that every tag has a sample visible at it."""
    from .replay_record import report_delays

    delays = report_delays(config)
    longest = max((t.period_s + delays.get(t.name, 0.0) for t in config.tags), default=0.0)
    return longest + 2 * config.control.guard.control_period_s


def read_window(source: str, t0: float | None, t1: float | None, before_s: float, database: str | None,
                session: str = ""):
    """(points from t0 − before_s to t1, with every process tag's last value before that, t0, t1,
    label) of SOURCE; t0 / t1 None: the span of the recorded ticks (store only)."""
    from . import replay_record as rp

    if source.startswith(("http://", "https://")):
        from .historian.influx1 import Influx1Sink
        from .historian.settings import HistorianSettings

        if t0 is None or t1 is None:
            raise ValueError(f"{source}: give --from and --to for an InfluxDB source")
        s = HistorianSettings.from_env()
        if s.version != 1:
            raise ValueError("replay reads InfluxDB through the 1.x query API (InfluxQL): set "
                             "PILOT_INFLUX_VERSION=1 (on 2.x: a bucket mapped to a database, with "
                             "PILOT_INFLUX_USER / PILOT_INFLUX_PASSWORD of a v1 authorization)")
        db = database or s.database
        sink = Influx1Sink(url=source, database=db, user=s.user, password=s.password)
        try:
            return rp.read_influx(sink, t0 - before_s, t1, session=session, held=True), t0, t1, f"{source} database {db}"
        finally:
            sink.close()
    path = Path(source)
    path = path / "history.sqlite" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{source}: no recorded history there (a run folder, a history.sqlite or an "
                         "InfluxDB URL)")
    if t0 is None or t1 is None:
        span = _ticks_span(path, session)
        t0, t1 = (span[0] if t0 is None else t0), (span[1] if t1 is None else t1)
    return rp.read_sqlite(path, t0 - before_s, t1, session=session, held=True), t0, t1, str(path)


def _ticks_span(path: Path, session: str) -> tuple[float, float]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        span = "SELECT MIN(time_s), MAX(time_s) FROM points WHERE session = ?"
        row = db.execute(span + " AND measurement = 'decision'", (session,)).fetchone()
        if row[0] is None:
            row = db.execute(span, (session,)).fetchone()
    finally:
        db.close()
    if row[0] is None:
        raise ValueError(f"{path}: nothing recorded" + (f" for session {session!r}" if session else ""))
    return float(row[0]), float(row[1])


def replay_cmd(
    source: Annotated[str, typer.Argument(help="a run folder (its history.sqlite), a store file, or an "
                                               "InfluxDB URL (http://host:8086)")],
    config_path: Annotated[Optional[Path], typer.Option(
        "--config", help="plant YAML (default: $PILOT_CONFIG, else the shipped line)")] = None,
    t_from: Annotated[Optional[str], typer.Option(
        "--from", help="start: plant time of a simulated record (2h, 5400) or ISO UTC "
                       "(2026-12-01T08:00:00Z); default: the first recorded tick")] = None,
    t_to: Annotated[Optional[str], typer.Option(
        "--to", help="end, as --from; default: the last recorded tick")] = None,
    warmup: Annotated[Optional[str], typer.Option(
        help="run the estimators this long before --from, not compared (1h)")] = None,
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="PATH=VALUE, repeatable: a config field (extraction.organic_flow_L_per_h=34) or "
                      "the loop's tuning: mpc.cascade.<field>, mpc.cell.<field>, estimator.<field>",
        show_default=False)] = None,
    weight: Annotated[Optional[list[str]], typer.Option(
        "--weight", metavar="UNIT.FIELD=VALUE", help="MPC tuning as `pilot whatif` takes it: cascade.<field> or "
                                                     "cell.<field> (= --set mpc.UNIT.FIELD=VALUE)",
        show_default=False)] = None,
    mode: Annotated[Optional[list[str]], typer.Option(
        help="LOOP=MODE (manual, advisory, auto), repeatable: for the whole replay (default: the "
             "recorded modes)", show_default=False)] = None,
    session: Annotated[str, typer.Option(
        help="the record of this training session (default: live and standalone runs)")] = "",
    database: Annotated[Optional[str], typer.Option(
        help="InfluxDB 1.x database (default: $PILOT_INFLUX_DATABASE, else pilot)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, proposals.csv, "
                                                        "history and replay.png")] = Path("out/replay"),
    plots: Annotated[bool, typer.Option(help="write replay.png")] = True,
) -> None:
    """Replay a recorded window through the estimators and MPCs as they are now; compare with the recorded decisions.

    At every recorded tick (of `pilot simulate --control` or of a live `pilot run`) the snapshot the loop saw is rebuilt from the record and the loop steps on it in the recorded modes, taking the setpoints the plant took then; nothing is written anywhere. With the same config the proposals repeat the recorded ones to the solver's tolerance; with --set the table shows what the changed loop would have proposed from the plant as it was.

    Writes DIR/summary.json (differences per setpoint, held mismatches, the alarms the replay would have raised beside the recorded ones, NIS per measured tag), DIR/proposals.csv (every tick: recorded, replayed, difference), DIR/history.sqlite (the replay's estimates, innovations, NIS, decisions and alarms; `pilot history DIR`) and DIR/replay.png. See docs/control_loop.md.
    """
    from .durations import parse_duration
    from .historian.base import SinkError
    from .replay import run_replay, time_label

    file = str(config_path_or_env(config_path) or "the shipped config")
    try:
        t0 = None if t_from is None else parse_time(t_from, "--from")
        t1 = None if t_to is None else parse_time(t_to, "--to")
        warm = 0.0 if warmup is None else parse_duration(warmup)
        given = parse_sets([*(sets or []), *(f"mpc.{w}" for w in weight or [])])
        modes = dict(_mode(m) for m in mode or [])
        options = tuning(given)
        config = plant_config(load_or_fail(config_path), given, file)
    except ValueError as exc:
        fail(str(exc))
    unknown = sorted(set(modes) - {lp.name for lp in config.control.guard.loops})
    if unknown:
        fail(f"--mode {unknown[0]}: no such loop in {file}; loops: "
             f"{', '.join(lp.name for lp in config.control.guard.loops)}")
    try:
        before = warm + lookback_s(config)
        points, t0, t1, label = read_window(source, t0, t1, before, database, session)
        if not t1 > t0:
            raise ValueError(f"--to ({time_label(t1)}) must come after --from ({time_label(t0)})")
        summary = run_replay(config, points, t0, t1, out_dir, source=label, warmup_s=warm,
                             modes=modes or None, make_plot=plots, read_from=t0 - before, **options)
    except (ValueError, OSError, sqlite3.Error, SinkError) as exc:  # SinkError: InfluxDB unreachable, query refused
        fail(str(exc))
    print_differences(summary, config)
    out.print(f"\nsummary:   {out_dir / 'summary.json'}\nproposals: {out_dir / 'proposals.csv'}\n"
              f"history:   {out_dir / 'history.sqlite'} (`pilot history {out_dir} --tag NAME`)")
    for p in summary["plots"]:
        out.print(f"plot:      {out_dir / p}")


def _mode(item: str) -> tuple[str, str]:
    loop, eq, m = item.partition("=")
    if not eq or m not in MODES:
        raise ValueError(f"--mode {item!r}: use LOOP=MODE with MODE one of {', '.join(MODES)}")
    return loop, m


def print_differences(summary: dict, config) -> None:
    """The differences table (replayed − recorded, per setpoint), then holds and alarms."""
    from .replay import time_label

    units = {t.name: t.unit for t in config.tags}
    table = Table(title=f"replay of {time_label(summary['from_s'])} .. {time_label(summary['to_s'])}: "
                        f"{summary['ticks']} ticks ({summary['recorded_ticks']} with recorded decisions)")
    table.add_column("setpoint", no_wrap=True, min_width=max(map(len, summary["differences"]), default=8))
    for col in ("unit", "max |Δ|", "mean Δ", "at", "recorded", "replay"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for tag, d in summary["differences"].items():
        table.add_row(tag, units.get(tag, ""), _num(d["max_abs"]), _num(d["mean"]), time_label(d["at_s"]),
                      _num(d["recorded"]), _num(d["replayed"]))
    out.print(table)
    held = summary["held_mismatches"]
    out.print(f"MPC holds that differ: {len(held)}" + "".join(
        f"\n  {time_label(h['t_s'])} {h['unit']}: {'held in the replay' if h['held_in_replay'] else 'held in the record'}"
        for h in held[:10]), highlight=False)
    start = summary.get("start", {})
    if start.get("held_from_before") or start.get("missing"):
        out.print(f"first tick: {len(start.get('held_from_before', []))} tags at their last value before the window"
                  + (f", no value for {', '.join(start['missing'])} (their loops hold)" if start.get("missing") else ""),
                  highlight=False)
    a = summary["alarms_raised"]
    out.print(f"alarms raised: replay {len(a['replay'])} ({_ids(a['replay'])}), recorded {len(a['recorded'])} "
              f"({_ids(a['recorded'])})", highlight=False)


def _ids(entries: list[dict]) -> str:
    return ", ".join(sorted({e["id"] for e in entries})) or "none"


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.1e}" if v != 0 and abs(v) < 1e-3 else f"{v:.5g}"
