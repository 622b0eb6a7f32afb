"""Steady state of PrOMMiS's 3-stage DEHPA case: Newton beside the pseudo-transient path, one core.

Both start cold from the same start (twin.sx.steady.initial_guess) on the case of
tests/data/prommis_sx_steady.yaml, and both are timed in this run (median of ``--repeat``
solves each, after one untimed warm-up solve):

    newton            analytic-Jacobian Newton with line search       goal < 0.1 s
    pseudo-transient  implicit-Euler pseudo-time steps, SER growth    the reference
    ratio             pseudo-transient / newton

PrOMMiS's own cold Ipopt solve of the same case takes about 0.1 s on this kind of machine.

    .venv/bin/python benchmarks/sx_steady_state.py [--repeat 20] [--case PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)

from pilot_config.sx_case import load_sx_case
from twin.sx import case_from_config, outlets
from twin.sx.steady import solve_steady

GOAL_S = 0.1
CASE = Path(__file__).resolve().parent.parent / "tests" / "data" / "prommis_sx_steady.yaml"


def timed(cascade, method: str, repeat: int) -> tuple[float, object]:
    state = solve_steady(cascade, method)  # warm-up: imports, caches
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        state = solve_steady(cascade, method)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed solves per method (median)")
    ap.add_argument("--case", type=Path, default=CASE, help="SX case YAML (default: PrOMMiS's)")
    _machine.add_arguments(ap)
    args = ap.parse_args()
    _machine.claim(1, allow_fewer=args.allow_fewer_cores)
    _machine.pin_to_one_core()
    case = case_from_config(load_sx_case(args.case))
    newton_s, fast = timed(case.cascade, "newton", args.repeat)
    ptc_s, slow = timed(case.cascade, "pseudo-transient", args.repeat)
    print(f"SX steady state, {args.case.name}: {case.cascade.n} stages, {case.cascade.m} species, "
          f"{case.cascade.n * (2 * case.cascade.m + 1)} unknowns, median of {args.repeat}, one core")
    print(_machine.load_line(1))
    print(f"{'method':18s} {'wall ms':>9s} {'iterations':>11s} {'vs goal':>8s}")
    for name, wall, st in (("newton", newton_s, fast), ("pseudo-transient", ptc_s, slow)):
        print(f"{name:18s} {wall * 1e3:9.2f} {st.iterations:11d} {wall / GOAL_S:7.3f}x")
    print(f"ratio pseudo-transient / newton: {ptc_s / newton_s:.1f}")
    raff = outlets(case, fast)["raffinate"]
    print(f"raffinate pH {raff['pH']:.4f}, Dy {raff['Dy']:.4e} mg/L, Y {raff['Y']:.4e} mg/L")
    print(f"goal: Newton under {GOAL_S * 1e3:.0f} ms (PrOMMiS's cold Ipopt solve: about 100 ms)")


if __name__ == "__main__":
    main()
