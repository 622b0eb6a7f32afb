"""Sweeps on Dask: every scenario of a sweep file run by ``pilot.app.simulate`` on a worker.

``run_scenario`` is the task: it gets a ``Scenario`` (the config text and the overrides, a few kB),
builds the config, twin and loop on the worker, runs ``simulate`` (what ``pilot simulate`` runs) in
a scratch folder and returns one row: the inputs, the KPIs of ``summary.json`` (nested ones
flattened as ``kpi.sub``), the alarms raised, the element balance error (its largest
|relative error| in ``balance_error_max``) and the wall times. A scenario that raises returns its
row with ``error`` set: a sweep never stops for one scenario.

``run_sweep`` submits the scenarios not finished yet to a ``distributed.Client`` and gathers them as
they finish (``as_completed``); with ``out_dir`` every finished row is kept as
``DIR/results/<key>.json`` (``Scenario.key``: a hash of the inputs), so a sweep run again skips
them. ``write_table`` writes one table (Parquet if pyarrow is installed, else CSV) and
``plot_sweep`` the PNGs (a KPI against each input; a response surface over two inputs).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

from .sweep_spec import Scenario, build_config, config_value

log = logging.getLogger(__name__)
PLOT_KPIS = ("tb_purity_pct", "tb_recovery_pct", "dy_purity_pct")
_UNITS = {"_pct": "%", "_kg": "kg", "_L_per_h": "L/h", "_mol_per_L": "mol/L", "_mg_per_L": "mg/L",
          "_L": "L", "_s": "s", "_h": "h", "_A": "A", "_C": "°C", "_kWh_per_kg_Tb": "kWh/kg Tb"}


def run_scenario(scenario: Scenario) -> dict:
    """Run one scenario on this process; the row of the results table (never raises)."""
    from .app import simulate

    row: dict = {"scenario": scenario.name, "key": scenario.key, **scenario.inputs(), "error": ""}
    wall0 = time.perf_counter()
    try:
        config = build_config(scenario.config_text, scenario.overrides)
        extra = {}
        if scenario.malfunctions:
            extra["malfunctions"] = _malfunctions(scenario.malfunctions)
        with TemporaryDirectory(prefix="pilot-sweep-") as scratch:
            result = simulate(config, scenario.until_s, Path(scratch), seed=scenario.seed, make_plots=False,
                              control=scenario.control, **extra)
        row.update(summary_columns(result.summary))
    except Exception as exc:  # a failed scenario is a row of the table, not the end of the sweep
        log.warning("scenario %s failed: %s", scenario.name, exc)
        row["error"] = error_text(exc)
    row["wall_time_s"] = time.perf_counter() - wall0
    row["worker"] = _worker_address()
    return row


def error_text(exc: Exception) -> str:
    """One line: a config error as ``field = value: what is allowed``, else ``Type: message``."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            e = errors(include_url=False)[0]
            return f"{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}"
        except (TypeError, IndexError, KeyError):
            pass
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # called outside a Dask worker
        return ""


def _malfunctions(specs: tuple[dict, ...]) -> list:
    from twin.malfunctions import Malfunction

    return [Malfunction.model_validate(m) for m in specs]


def summary_columns(summary: dict) -> dict:
    """KPIs, alarm count, balance error and simulation wall time of a ``simulate`` summary."""
    cols: dict = {}
    for name, value in summary["kpis"].items():
        if isinstance(value, dict):
            cols.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            cols[name] = value
    balance = summary["kpis"].get("mass_balance_error") or {}
    finite = [abs(v) for v in balance.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    cols["balance_error_max"] = max(finite, default=0.0)
    ctrl = summary.get("control") or {}
    cols["alarms_raised"] = ctrl.get("alarms_raised", 0)
    cols["alarms_chattered"] = len(ctrl.get("alarms_chattered", []))
    cols["sim_wall_time_s"] = summary["wall_time_s"]
    cols["plant_time_s"] = summary["plant_time_s"]
    return cols


def finished_rows(out_dir: Path | None) -> dict[str, dict]:
    """Rows of scenarios finished without error in an earlier run into ``out_dir``, by key."""
    rows: dict[str, dict] = {}
    if out_dir is None or not (out_dir / "results").is_dir():
        return rows
    for f in sorted((out_dir / "results").glob("*.json")):
        try:
            row = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a half-written row: the scenario runs again
        if not row.get("error"):
            rows[row["key"]] = row
    return rows


def _keep(out_dir: Path, row: dict) -> None:
    d = out_dir / "results"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{row['key']}.tmp"
    tmp.write_text(json.dumps(row, default=str), encoding="utf-8")
    tmp.replace(d / f"{row['key']}.json")


def run_sweep(scenarios: list[Scenario], client, *, out_dir: Path | None = None,
              progress: Callable[[dict, bool], None] | None = None) -> list[dict]:
    """Every scenario's row, in the sweep's order; finished ones (in ``out_dir``) not run again.

    ``progress(row, resumed)`` is called once per scenario as its row arrives."""
    from distributed import as_completed

    done = finished_rows(out_dir)
    rows = {s.key: done[s.key] for s in scenarios if s.key in done}
    for row in rows.values():
        if progress:
            progress(row, True)
    todo = list({s.key: s for s in scenarios if s.key not in rows}.values())
    futures = client.map(run_scenario, todo, key=[f"scenario-{s.key}" for s in todo], pure=False)
    by_key = {f.key: s for f, s in zip(futures, todo)}
    for fut in as_completed(futures):
        scenario = by_key[fut.key]
        try:
            row = fut.result()
        except Exception as exc:  # the worker died or the task could not be run
            row = {"scenario": scenario.name, "key": scenario.key, **scenario.inputs(),
                   "error": f"{type(exc).__name__}: {exc}", "wall_time_s": math.nan}
        fut.release()
        if out_dir is not None and not row.get("error"):
            _keep(out_dir, row)
        rows[scenario.key] = row
        if progress:
            progress(row, False)
    return [rows[s.key] for s in scenarios]


@contextlib.contextmanager
def dask_client(workers: int = 2, scheduler: str | None = None) -> Iterator:
    """A client of ``scheduler`` (``tcp://host:8786``), else of a LocalCluster of ``workers``
    processes with one thread each (a twin run is single-threaded Python)."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, timeout="20s") as client:
            yield client
        return
    import dask

    # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536 (memory handed back to the OS
    # eagerly); a twin run allocates many small arrays and pays for it: measured 2.5 % per scenario
    # on six one-hour closed-loop runs. A sweep's workers live as long as the sweep only.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def write_table(rows: list[dict], out_dir: Path) -> Path:
    """``out_dir/results.parquet`` if pyarrow is installed, else ``out_dir/results.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = out_dir / "results.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, restval="")
            w.writeheader()
            w.writerows(rows)
        return path
    path = out_dir / "results.parquet"
    table = pa.table({c: [_cell(r.get(c)) for r in rows] for c in cols})
    pq.write_table(table, path)
    return path


def _cell(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)


def unit_of(name: str) -> str:
    """The unit of a field or KPI from its name's suffix (``organic_flow_L_per_h`` → L/h)."""
    for suffix, unit in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return unit
    return "-"


def _label(name: str) -> str:
    return f"{name} [{unit_of(name)}]"


def filled_inputs(rows: list[dict], scenarios: list[Scenario]) -> tuple[list[dict], list[str]]:
    """Rows with every overridden field set (a scenario that leaves one as is: the config's value)
    and the fields that are numbers and vary over the sweep."""
    names = list(dict.fromkeys(k for s in scenarios for k in s.overrides))
    by_key = {s.key: s for s in scenarios}
    filled = []
    for r in rows:
        s = by_key.get(r["key"])
        missing = {n: config_value(s.config_text, n) for n in names if n not in r and s is not None}
        filled.append({**r, **missing})
    numeric = [n for n in names
               if len({r.get(n) for r in filled if isinstance(r.get(n), (int, float))
                       and not isinstance(r.get(n), bool)}) > 1]
    return filled, numeric


def plot_sweep(rows: list[dict], scenarios: list[Scenario], out_dir: Path,
               kpis: tuple[str, ...] = PLOT_KPIS) -> list[Path]:
    """PNGs: each KPI against each numeric input (one figure per input; a series per loop mode),
    and, with two or more inputs, a response surface of the first KPI over the first two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok, inputs = filled_inputs([r for r in rows if not r.get("error")], scenarios)
    kpis = tuple(k for k in kpis if any(isinstance(r.get(k), (int, float)) for r in ok))
    paths: list[Path] = []
    for x in inputs:
        fig, axes = plt.subplots(len(kpis), 1, figsize=(6, 2.6 * len(kpis)), sharex=True, squeeze=False)
        for ax, k in zip(axes[:, 0], kpis):
            for mode in sorted({r["control"] for r in ok}):
                pts = sorted((r[x], r[k]) for r in ok if r["control"] == mode and r.get(k) is not None)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"control {mode}")  # points: other inputs vary
            ax.set_ylabel(_label(k))
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel(_label(x))
        fig.suptitle(f"KPIs against {x} ({len(ok)} scenarios)")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"kpi_vs_{x.replace('.', '_')}.png"))
    if len(inputs) >= 2 and kpis:
        paths.extend(_surface(plt, ok, inputs[0], inputs[1], kpis[0], out_dir))
    return paths


def _surface(plt, rows: list[dict], x: str, y: str, k: str, out_dir: Path) -> list[Path]:
    pts = [(r[x], r[y], r[k]) for r in rows if r.get(k) is not None]
    if len({(a, b) for a, b, _ in pts}) < 3:
        return []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs, ys, zs = zip(*pts)
    try:
        cs = ax.tricontourf(xs, ys, zs, levels=12, cmap="viridis")
        fig.colorbar(cs, ax=ax, label=_label(k))
    except (ValueError, RuntimeError):  # collinear points: no triangulation, the points alone
        sc = ax.scatter(xs, ys, c=zs, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=_label(k))
    ax.plot(xs, ys, "k.", ms=4)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(f"{k} over {x} × {y}", fontsize=8)
    fig.tight_layout()
    return [_save(fig, out_dir / f"surface_{k}.png")]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
