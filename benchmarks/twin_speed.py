"""Real-time factor of the twin: plant-seconds simulated per wall-second, one core.

Runs the shipped default line (new extractant, emulsion flow) and the conventional line
(mixer-settlers) for the same plant time, side by side in one process, and prints their
real-time factors against the goal of 3,600x (a plant day in under 24 s). The reference is real
time itself (factor 1) and the goal; the per-unit split shows where the time goes.

    .venv/bin/python benchmarks/twin_speed.py [--hours 24] [--allow-fewer-cores]

It runs on one core (pinned, one BLAS thread), refuses when none is available, and prints the
machine's load average beside its figures.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)

from pilot_config import conventional_config_path, default_config_path, load_config
from twin import integrate
from twin.plant import TwinPlant

GOAL = 3600.0


def run(path, hours: float) -> dict:
    config = load_config(path)
    per_unit: dict[str, float] = defaultdict(float)
    original = integrate.advance

    def timed(unit, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(unit, *args, **kwargs)
        finally:
            per_unit[unit.name] += time.perf_counter() - t0

    t0 = time.perf_counter()
    plant = TwinPlant(config)
    build = time.perf_counter() - t0
    import twin.flowsheet as fs_mod

    fs_mod.advance = timed
    try:
        t1 = time.perf_counter()
        plant.advance(hours * 3600.0)
        wall = time.perf_counter() - t1
    finally:
        fs_mod.advance = original
    return {"name": config.name, "build_s": build, "wall_s": wall, "factor": hours * 3600.0 / wall,
            "per_unit": dict(per_unit)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="plant hours per line (default 24)")
    _machine.add_arguments(ap)
    args = ap.parse_args()
    _machine.claim(1, allow_fewer=args.allow_fewer_cores)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = [run(default_config_path(), args.hours), run(conventional_config_path(), args.hours)]
    print(f"twin speed, {args.hours:g} plant-hours per line, one core")
    print(_machine.load_line(1))
    print(f"{'line':34s} {'build s':>8s} {'run s':>8s} {'x real time':>12s} {'vs goal':>8s}")
    for r in rows:
        print(f"{r['name']:34s} {r['build_s']:8.2f} {r['wall_s']:8.2f} {r['factor']:12.0f} "
              f"{r['factor'] / GOAL:7.2f}x")
    for r in rows:
        split = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(r["per_unit"].items(), key=lambda kv: -kv[1]))
        print(f"  {r['name']}: {split}")
    print(f"goal: {GOAL:.0f}x real time (a plant day in {86400 / GOAL:.0f} s); reference: real time = 1x")


if __name__ == "__main__":
    main()
