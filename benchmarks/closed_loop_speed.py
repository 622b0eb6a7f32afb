"""Real-time factor of the closed loop: ``pilot simulate --control auto`` against the same run open-loop.

Runs the shipped default line for ``--hours`` plant-hours (default 8) twice in one process, open
loop (``--control off``: the PLC's own logic only) and with every control loop in auto
(estimators, MPC, guard and alarms every ``control.guard.control_period_s``), each ``--repeats``
times interleaved (off, auto, off, auto, ...), recording included, plots left out. It prints
both real-time factors, their ratio (what the control loop costs), the control ticks' latency
(p50 / p99 / max from the run's summary) and the KPIs of both runs, against the goal of
1,000x real time for the closed loop on a quiet core.

    .venv/bin/python benchmarks/closed_loop_speed.py [--hours 8] [--repeats 1] [--allow-fewer-cores]

It runs on one core (pinned, one BLAS thread: a worker thread of the loop shares that core),
refuses when none is available, and prints the machine's load average beside its figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)

from pilot.app import simulate
from pilot_config import default_config_path, load_config

GOAL = 1000.0
KPIS = ("tb_purity_pct", "dy_recovery_pct", "current_efficiency_pct")


def run(config, hours: float, control: str, out: Path) -> dict:
    t0 = time.perf_counter()
    summary = simulate(config, hours * 3600.0, out, make_plots=False, control=control).summary
    wall = time.perf_counter() - t0
    row = {"control": control, "wall_s": wall, "factor": hours * 3600.0 / wall, "kpis": summary["kpis"]}
    if "control" in summary:
        row["ticks"] = summary["control"]["ticks"]
        row["latency_ms"] = summary["control"]["tick_latency_ms"]
    return row


def best(rows: list[dict], control: str) -> dict:
    """The fastest of the repeats (the least disturbed by the rest of the machine)."""
    return max((r for r in rows if r["control"] == control), key=lambda r: r["factor"])


def report(rows: list[dict], hours: float) -> None:
    off, auto = best(rows, "off"), best(rows, "auto")
    print(f"closed-loop speed, {hours:g} plant-hours of {load_config(default_config_path()).name}, one core, "
          f"recording included (best of {len(rows) // 2})")
    print(_machine.load_line(1))
    print(f"{'run':22s} {'wall s':>8s} {'x real time':>12s} {'vs goal':>8s}")
    for r in rows:
        print(f"  --control {r['control']:11s} {r['wall_s']:8.2f} {r['factor']:12.0f}"
              + (f" {r['factor'] / GOAL:7.2f}x" if r["control"] == "auto" else ""))
    print(f"closed loop / open loop: {auto['factor']:.0f}x / {off['factor']:.0f}x = "
          f"{auto['factor'] / off['factor']:.2f} (the control loop takes {1 - auto['factor'] / off['factor']:.0%} "
          f"of the closed run's time)")
    lat = auto["latency_ms"]
    print(f"control ticks: {auto['ticks']}, latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
          f"max {lat['max']:.1f} ms")
    for name in KPIS:
        print(f"  {name:26s} off {off['kpis'].get(name, float('nan')):10.4f}   "
              f"auto {auto['kpis'].get(name, float('nan')):10.4f}")
    print(f"goal: {GOAL:.0f}x real time closed loop on a quiet core; reference: the same run open loop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=8.0, help="plant hours per run (default 8)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved (default 1)")
    _machine.add_arguments(ap)
    args = ap.parse_args()
    _machine.claim(1, allow_fewer=args.allow_fewer_cores)
    _machine.pin_to_one_core()
    config = load_config(default_config_path())
    rows = []
    with tempfile.TemporaryDirectory(prefix="closed-loop-speed-") as tmp:
        for k in range(max(1, args.repeats)):
            for control in ("off", "auto"):
                rows.append(run(config, args.hours, control, Path(tmp) / f"{control}-{k}"))
    report(rows, args.hours)


if __name__ == "__main__":
    main()
