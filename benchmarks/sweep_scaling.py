"""Speed-up of ``pilot sweep`` on 1 and 2 Dask workers, and its per-scenario overhead.

Sixteen one-hour scenarios (organic flow 30..36 L/h × extractant 0.9..1.1 mol/L, a 4 × 4 grid) run
on a LocalCluster of 1 worker process and then of 2, in the same run; the reference is a plain
``pilot.app.simulate`` (what ``pilot simulate`` runs) of the same scenarios, one after the other in
this process, after one discarded warm-up run (imports and first-call caches).

    speed-up  = wall(1 worker) / wall(2 workers)                        goal ≥ 1.8 on 2 cores
    overhead  = wall(1 worker) / Σ wall(plain simulate, same scenarios) − 1   goal < 10 %

Cluster start-up is included in the sweep wall times (it is what a user waits for). The load
average before and after is printed: on a shared machine other work skews both figures.

    .venv/bin/python benchmarks/sweep_scaling.py [--scenarios 16] [--control auto] [--reference N]

(``--reference N``: the plain runs cover the first N scenarios only, and the overhead compares the
sweep's own per-scenario times of those N against them.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pilot.app import simulate
from pilot.sweep import dask_client, run_sweep
from pilot.sweep_spec import Scenario, build_config, load_sweep


def scenarios(n: int, control: str, folder: Path) -> list[Scenario]:
    side = max(2, round(n ** 0.5))
    flows = [30 + 6 * i / (side - 1) for i in range(side)]
    acts = [0.9 + 0.2 * i / (side - 1) for i in range(side)]
    spec = folder / "sweep.yaml"
    spec.write_text(f"until: 1h\ncontrol: {control}\ngrid:\n"
                    f"  extraction.organic_flow_L_per_h: {flows}\n"
                    f"  extraction.extractant_concentration_mol_per_L: {acts}\n", encoding="utf-8")
    return load_sweep(spec)[:n]


def sweep_wall(items: list[Scenario], workers: int) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    with dask_client(workers) as client:
        rows = run_sweep(items, client)
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=16)
    ap.add_argument("--control", choices=("off", "advisory", "auto"), default="auto")
    ap.add_argument("--reference", type=int, default=None,
                    help="plain simulate runs for the reference (default: every scenario)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = scenarios(args.scenarios, args.control, Path(tmp))
        load0 = os.getloadavg()
        n_ref = len(items) if args.reference is None else min(args.reference, len(items))
        warm = items[0]
        simulate(build_config(warm.config_text, warm.overrides), warm.until_s, Path(tmp) / "warm-up",
                 make_plots=False, control=warm.control)
        plain = []
        for i, s in enumerate(items[:n_ref]):
            t0 = time.perf_counter()
            simulate(build_config(s.config_text, s.overrides), s.until_s, Path(tmp) / f"plain{i}",
                     make_plots=False, control=s.control)
            plain.append(time.perf_counter() - t0)
        walls = {w: sweep_wall(items, w) for w in (1, 2)}
        load1 = os.getloadavg()
    failed = sum(bool(r["error"]) for _, rows in walls.values() for r in rows)
    ref = statistics.mean(plain)
    w1, w2 = walls[1][0], walls[2][0]
    task = statistics.mean(r["wall_time_s"] for r in walls[1][1][:len(plain)])
    # mean plain time over every scenario (estimated from the sweep's own times when fewer ran plain)
    ref_all = ref * statistics.mean(r["wall_time_s"] for r in walls[1][1]) / task
    print(f"{len(items)} one-hour scenarios, control {args.control}, {os.cpu_count()} CPUs, "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after; {failed} failed")
    print(f"plain simulate (reference, {len(plain)} runs): {ref:.2f} s per scenario")
    print(f"sweep, 1 worker : {w1:7.1f} s  ({w1 / len(items):.2f} s per scenario, task {task:.2f} s)")
    print(f"sweep, 2 workers: {w2:7.1f} s")
    print(f"speed-up 2 vs 1 workers: {w1 / w2:.2f}x (goal >= 1.8x)")
    print(f"per-scenario overhead over plain simulate: {100 * (w1 / len(items) / ref_all - 1):+.1f} % "
          f"(goal < 10 %; in the task alone {100 * (task / ref - 1):+.1f} %)")


if __name__ == "__main__":
    main()
