"""Real-time factor of the twin, recording included, against the previous release in the same run.

The factor is plant-seconds simulated per wall-second, on one core.

Each run is what ``pilot simulate --no-plots`` does (``pilot.app.simulate``: the shipped line, every
tag recorded into the embedded history at the record period) for ``--hours`` plant-hours, in a
subprocess pinned to one core with one BLAS thread. The reference is the code at ``--reference
REV`` (default: the commit before the one that added ``twin/rosenbrock.py``, or HEAD while that
file is not committed), checked out with ``git worktree add`` into a temporary folder; its runs
are interleaved with the current code's (the order rotated each round: reference, current,
adaptive; current, adaptive, reference; ...), repeated ``--repeat`` times, and the medians
compared. Printed per run: the real-time factor, the time in each unit's integrator and in
recording (per recording step); then the ratio current/reference and the machine's load
(``_machine.load_line``).

The adaptive step (``simulation.max_sync_step_s``, ``--max-sync``, default 300 s; 0 leaves it out)
is a third row, interleaved with the other two: its factor, its ratio to the 60 s grid of the same
code, and what it changes against that grid over the same plant-hours of each shipped line (both
configs, or ``--config``): the largest KPI difference in percentage points (every ``*_pct`` KPI),
the largest of any other KPI, and whether every plant event (switches, taps, batches) came at the
same plant time.

    .venv/bin/python benchmarks/twin_speed.py [--hours 24] [--repeat 3] [--reference REV]
        [--config PATH] [--max-sync 300] [--allow-fewer-cores]

Goal: 15,000x real time on a quiet core. On a shared machine the absolute figures drop; the
ratio against the reference, measured side by side, is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)

GOAL = 15_000.0
STRETCH = 25_000.0
DEFAULT_MAX_SYNC = 300.0
ROOT = Path(__file__).resolve().parents[1]


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def worker(hours: float, config_path: str | None, max_sync: float = 0.0) -> dict:
    """One run in this interpreter (the tree on PYTHONPATH): timings as a dict."""
    import pilot.app as app
    import twin.flowsheet as fs
    from pilot.historian.sqlite import SqliteSink
    from pilot_config import default_config_path, load_config

    per_unit: dict[str, float] = defaultdict(float)
    rec = {"s": 0.0, "n": 0}

    def timed_unit(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                per_unit[key(args)] += time.perf_counter() - t0
        return wrapper

    if hasattr(fs.Block, "advance"):  # per-block integrators
        fs.Block.advance = timed_unit(fs.Block.advance, lambda a: a[0].name)
    else:  # one scipy call per block and step
        fs.advance = timed_unit(fs.advance, lambda a: a[0].name)

    def timed_rec(fn, count: bool):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                rec["s"] += time.perf_counter() - t0
                rec["n"] += count
        return wrapper

    SqliteSink.write_batch = timed_rec(SqliteSink.write_batch, True)
    SqliteSink.close = timed_rec(SqliteSink.close, False)  # an index built at close counts
    app.process_points = timed_rec(app.process_points, False)
    config = load_config(config_path or default_config_path())
    if max_sync > 0:
        config = config.model_copy(update={"simulation": config.simulation.model_copy(
            update={"max_sync_step_s": max_sync})})
    with tempfile.TemporaryDirectory() as out:
        result = app.simulate(config, hours * 3600.0, Path(out) / "run", make_plots=False)
    return {"line": config.name, "twin": str(Path(fs.__file__).resolve().parents[1]),
            "wall_s": result.summary["wall_time_s"], "factor": result.summary["realtime_factor"],
            "per_unit": dict(per_unit), "record_s": rec["s"], "record_steps": rec["n"],
            "kpis": _numbers(result.summary["kpis"]),
            "events": [(e["t_s"], e["unit"]) for e in result.summary["events"]]}


def run_tree(tree: Path, hours: float, config: str | None, max_sync: float = 0.0) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--hours", str(hours)]
    if config:
        cmd += ["--config", config]
    if max_sync > 0:
        cmd += ["--max-sync", str(max_sync)]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"twin_speed: run in {tree} failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(out["twin"]) != tree.resolve():
        raise SystemExit(f"twin_speed: {tree} ran the twin of {out['twin']} (PYTHONPATH not honoured)")
    return out


def default_reference() -> str:
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "twin/rosenbrock.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def show(tag: str, r: dict) -> None:
    units = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(r["per_unit"].items(), key=lambda kv: -kv[1]))
    per_step = 1e3 * r["record_s"] / max(r["record_steps"], 1)
    print(f"  {tag:9s} {r['factor']:9.0f}x  run {r['wall_s']:6.2f}s  units: {units}; "
          f"recording {r['record_s']:.2f}s ({r['record_steps']} steps, {per_step:.2f} ms/step)", flush=True)


def kpi_change(grid: dict, adaptive: dict) -> str:
    """The adaptive step against the 60 s grid: largest KPI differences and the events' times."""
    pp = {k: abs(adaptive["kpis"][k] - v) for k, v in grid["kpis"].items()
          if "_pct" in k and k in adaptive["kpis"]}
    other = {k: abs(adaptive["kpis"][k] - v) for k, v in grid["kpis"].items()
             if "_pct" not in k and "mass_balance" not in k and k in adaptive["kpis"]}
    worst_pp, worst = max(pp, key=pp.get), max(other, key=other.get)
    balance = max(abs(v) for k, v in adaptive["kpis"].items() if "mass_balance" in k)
    same = [tuple(e) for e in grid["events"]] == [tuple(e) for e in adaptive["events"]]
    return (f"largest KPI change {pp[worst_pp]:.2g} pp ({worst_pp}); other KPIs at most {other[worst]:.2g} "
            f"({worst}); {len(grid['events'])} events, {'all at the same plant times' if same else 'TIMES DIFFER'}; "
            f"worst balance error {balance:.1e}")


def compare(args) -> None:
    rev = args.reference or default_reference()
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="twin_speed_ref_"))
    ref_tree = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), sha], cwd=ROOT, check=True,
                   capture_output=True)
    tags = ("reference", "current") + (("adaptive",) if args.max_sync > 0 else ())
    runs: dict[str, list[dict]] = {tag: [] for tag in tags}
    try:
        print(f"twin speed: {args.hours:g} plant-hours, recording included, one core; "
              f"reference {rev} = {sha[:10]}"
              + (f"; adaptive: max_sync_step_s {args.max_sync:g}" if args.max_sync > 0 else ""), flush=True)
        for k in range(args.repeat):
            order = tags[k % len(tags):] + tags[:k % len(tags)]
            for tag in order:
                r = run_tree(ref_tree if tag == "reference" else ROOT, args.hours, args.config,
                             args.max_sync if tag == "adaptive" else 0.0)
                runs[tag].append(r)
                show(tag, r)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, check=False,
                       capture_output=True)
    med = {tag: statistics.median(r["factor"] for r in rs) for tag, rs in runs.items()}
    print(f"line {runs['current'][0]['line']}: median {med['current']:.0f}x (current) vs "
          f"{med['reference']:.0f}x (reference): {med['current'] / med['reference']:.2f}x the reference; "
          f"goal {GOAL:.0f}x on a quiet core ({med['current'] / GOAL:.2f} of it)")
    if args.max_sync > 0:
        print(f"adaptive step: median {med['adaptive']:.0f}x: {med['adaptive'] / med['current']:.2f}x the "
              f"60 s grid, {med['adaptive'] / med['reference']:.2f}x the reference; stretch goal "
              f"{STRETCH:.0f}x ({med['adaptive'] / STRETCH:.2f} of it)")
        print(f"  {runs['current'][0]['line']}: {kpi_change(runs['current'][0], runs['adaptive'][0])}")
        if not args.config:  # the other shipped line: one run of each, for its KPIs
            other = str(ROOT / "pilot_config" / "pilot_line_conventional.yaml")
            grid, adaptive = (run_tree(ROOT, args.hours, other, m) for m in (0.0, args.max_sync))
            print(f"  {grid['line']}: {kpi_change(grid, adaptive)} "
                  f"({adaptive['factor']:.0f}x against {grid['factor']:.0f}x)")
    print(_machine.load_line(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="plant hours per run (default 24)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tree, interleaved (default 3)")
    ap.add_argument("--reference", help="git revision to compare with (default: before the solvers)")
    ap.add_argument("--config", help="plant YAML (default: the shipped line)")
    ap.add_argument("--max-sync", type=float, default=None,
                    help="max_sync_step_s of the adaptive row (default 300; 0: no adaptive row)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _machine.add_arguments(ap)
    args = ap.parse_args()
    if args.worker:
        _machine.pin_to_one_core()
        print(json.dumps(worker(args.hours, args.config, args.max_sync or 0.0)))
        return
    args.max_sync = DEFAULT_MAX_SYNC if args.max_sync is None else args.max_sync
    _machine.claim(1, allow_fewer=args.allow_fewer_cores)
    compare(args)


if __name__ == "__main__":
    main()
