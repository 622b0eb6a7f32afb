"""Control-tick latency of estimation + MPC for the default line, and do-mpc as the reference.

Two measurements: the components one by one (below), then the production tick as a whole
(``ControlLoop.step``: all estimators including the carousel's, all MPCs, guard, alarms) over a
span with the carousel's capacity fits: col2 fouled (``--fouling`` 0.2: capacity × 0.2 from the
start, ``twin.malfunctions`` ``adsorbent_fouling``), so the lag col2 breaks through at ~2.1 h and
the PLC switches at ~2.3 h (its fits every 15 min from the first informative sample, the
forecasts and the decision's forecasts after the switch, with no column standing by); warmed at a
60 s period to ``--loop-from-h`` (2.0 h), then ``--loop-ticks`` (1,800) at ``--period``, once with the slow carousel work on the control thread (``slow_work="inline"``, the
reference) and once per worker of ``--workers`` (thread, process: applied when finished, the tick
never waits; the process runs niced, ``controllers.carousel_worker.WORKER_NICE``, as in the loop).
Goal: p99 < 50 ms and the worst tick < 250 ms. Every fit of the span is printed
with its seconds, the time of its data and how much later it was applied.

Per tick (period 1 s, plant on the virtual clock, one core): the EKF of each cell and of the
cascade, then the MPC of each cell and of the cascade; the plant's own advance is not timed.
The plant is first run for ``--warm-h`` hours at a 60 s tick (estimators converged, analyser
histories full); the default 2.25 h puts into the 1,000 timed ticks the arrival of the cells'
salt and cathode analysers (sampled 30 min earlier: 1,800 stored ticks re-run) and of the
cascade's (10 min).
Goal: p99 < 100 ms.

Reference: the same cell MPC problem (same linearisation, horizon, weights, bounds, soft output
limits) solved both ways on equal terms: one thread (BLAS threads set to 1 before numpy loads,
process pinned to one core), both warm and at the same tolerance (``TOL``, OSQP's eps_abs/eps_rel
and IPOPT's tol). OSQP: the condensed QP set up once; each timed call rebuilds the QP from the
linearisation, hands it over and re-solves warm-started from the previous solution. do-mpc
(CasADi + IPOPT): built once, with the linearisation (A, B, c and the output map) declared as
time-varying parameters, set at every step, so its set-up is the reference's own one-time cost
and each make_step is warm-started from the previous step. do-mpc has no rate bounds on the inputs
(its ``rterm`` is the move penalty), so the reference omits the rate limits; the first moves are
compared on a tick where they are inactive. The production tick above uses the controller's own
solver (``controllers.mpc.QpSolver`` at 1e-4: kept across ticks, the QP updated and warm-started).

    .venv/bin/python benchmarks/control_cycle.py [--ticks 1000] [--warm-h 2.25] [--loop-from-h 11.4]
        [--loop-ticks 1500] [--workers thread,process] [--allow-fewer-cores]
    .venv/bin/python benchmarks/control_cycle.py --blas-cpu [--ticks 300]   # CPU vs wall, BLAS 2 vs 1

It claims one core (refuses on none unless --allow-fewer-cores); the whole loop's worker variants
run on two where the machine has them (the tick thread and the worker thread or process, which is
what a worker is for; a thread still shares the GIL) and prints the machine's load average before and after its figures. ``--blas-cpu``
claims two and runs unpinned: the component ticks with the BLAS on every core, then on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)
import numpy as np
import osqp
import scipy.sparse as sps

from controllers.estimation_cascade import cascade_estimator
from controllers.estimation_cell import cell_estimator
from controllers.mpc import _qp
from controllers.mpc_cascade import CascadeMpc
from controllers.mpc_cell import CellMpc
from pilot_config import default_config_path, load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant

GOAL_S = 0.100
GOAL_LOOP_P99_MS, GOAL_LOOP_MAX_MS = 50.0, 250.0  # the whole loop at 1 s with the carousel's fits
TOL = 1e-6  # both solvers: OSQP eps_abs = eps_rel, IPOPT tol
REPEATS = 20


def build(config):
    cells = [(c.name, cell_estimator(c), CellMpc(c, config.tags)) for c in config.electrolysis.cells]
    sx = cascade_estimator(config)
    return cells, (sx, CascadeMpc(sx.model, config.tags))


def tick(cells, cascade, snap, t, period, timing):
    out = {}
    for name, ekf, mpc in cells:
        t0 = time.perf_counter()
        est = ekf.step(snap, {}, t)
        t1 = time.perf_counter()
        res = mpc.step(est, snap, t, control_period_s=period)
        t2 = time.perf_counter()
        timing[f"{name} EKF"].append(t1 - t0)
        timing[f"{name} MPC"].append(t2 - t1)
        out[name] = (est, res)
    ekf, mpc = cascade
    t0 = time.perf_counter()
    est = ekf.step(snap, {}, t)
    t1 = time.perf_counter()
    res = mpc.step(est, snap, t, control_period_s=period)
    t2 = time.perf_counter()
    timing["cascade EKF"].append(t1 - t0)
    timing["cascade MPC"].append(t2 - t1)
    out["extraction"] = (est, res)
    return out


def do_mpc_reference(lin, spec, u_prev):
    """The cell QP in do-mpc, built once; returns (first move, build s, warm make_step s) or a reason."""
    try:
        import do_mpc  # noqa: F401  (pulls casadi)
    except ImportError as exc:
        return f"do-mpc not importable: {exc} (pip install -e '.[bench]')"
    t0 = time.perf_counter()
    mpc = _do_mpc_build(lin, spec, u_prev)
    setup = time.perf_counter() - t0
    x0 = np.zeros((lin.a.shape[0], 1))
    u0 = mpc.make_step(x0)  # first step: cold start
    times = []
    for _ in range(REPEATS):
        t1 = time.perf_counter()
        u0 = mpc.make_step(x0)
        times.append(time.perf_counter() - t1)
    return np.ravel(u0), setup, float(np.median(times))


def _do_mpc_build(lin, spec, u_prev):
    """The same model, objective, bounds and soft output limits as ``controllers.mpc``; the
    linearisation (a, b, c, cy, dy, ey) enters as time-varying parameters, set every step."""
    import casadi as ca
    import do_mpc

    nx, m = lin.b.shape
    ny = lin.cy.shape[0]
    model = do_mpc.model.Model("discrete")
    x = model.set_variable("_x", "x", (nx, 1))
    u = model.set_variable("_u", "u", (m, 1))
    par = {k: model.set_variable("_tvp", k, getattr(lin, k).shape) for k in ("a", "b", "cy", "dy")}
    c = model.set_variable("_tvp", "c", (nx, 1))
    ey = model.set_variable("_tvp", "ey", (ny, 1))
    model.set_rhs("x", par["a"] @ x + par["b"] @ u + c)
    model.set_expression("y", par["cy"] @ x + par["dy"] @ u + ey)
    model.setup()
    mpc = do_mpc.controller.MPC(model)
    mpc.settings.n_horizon = spec.horizon
    mpc.settings.t_step = lin.step_s
    mpc.settings.store_full_solution = False
    mpc.settings.nlpsol_opts = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": 0, "ipopt.tol": TOL}
    template = mpc.get_tvp_template()

    def tvp(_t):
        for k in range(spec.horizon + 1):
            for name in ("a", "b", "cy", "dy"):
                template["_tvp", k, name] = getattr(lin, name)
            template["_tvp", k, "c"] = np.reshape(lin.c, (nx, 1))
            template["_tvp", k, "ey"] = np.reshape(lin.ey, (ny, 1))
        return template

    mpc.set_tvp_fun(tvp)
    w = np.where(np.isfinite(spec.y_ref), spec.w_y, 0.0)
    r = np.nan_to_num(spec.y_ref)
    track = sum(w[i] * (model.aux["y"][i] - r[i]) ** 2 for i in range(len(w)))
    reg = sum(spec.w_u[i] * (model.u["u"][i] - spec.u_ref[i]) ** 2 for i in range(m))
    mpc.set_objective(lterm=track + reg, mterm=ca.DM(0))
    mpc.set_rterm(u=np.asarray(spec.w_du))
    mpc.bounds["lower", "_u", "u"] = spec.u_min
    mpc.bounds["upper", "_u", "u"] = spec.u_max
    for i in range(len(w)):
        for name, sign, limit in ((f"ymax{i}", 1.0, spec.y_max[i]), (f"ymin{i}", -1.0, spec.y_min[i])):
            if np.isfinite(limit):
                mpc.set_nl_cons(name, sign * model.aux["y"][i], ub=sign * limit, soft_constraint=True,
                                penalty_term_cons=spec.rho_lin)
    mpc.setup()
    mpc.x0 = np.zeros(nx)
    mpc.u0 = u_prev
    mpc.set_initial_guess()
    return mpc


def osqp_warm(lin, spec, u_prev):
    """The controller's condensed QP (``controllers.mpc._qp``, unscaled) set up once in OSQP at
    ``TOL``; each timed call rebuilds the QP from the linearisation, hands it over (matrices,
    vectors) and re-solves warm-started, as do-mpc's time-varying parameters are set per step.
    Returns (first move, median call s)."""
    u_prev = np.clip(np.asarray(u_prev, dtype=float), spec.u_min, spec.u_max)
    p, q, a_c, lo, hi, *_ = _qp(lin, spec, u_prev)
    solver = osqp.OSQP()
    solver.setup(sps.triu(p, format="csc"), q, sps.csc_matrix(a_c), lo, hi, verbose=False,
                 eps_abs=TOL, eps_rel=TOL, polishing=True, max_iter=20000, warm_starting=True)
    res = solver.solve(raise_error=False)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        p, q, a_c, lo, hi, *_ = _qp(lin, spec, u_prev)
        solver.update(Px=sps.triu(p, format="csc").data, Ax=sps.csc_matrix(a_c).data, q=q, l=lo, u=hi)
        res = solver.solve(raise_error=False)
        times.append(time.perf_counter() - t0)
    m = lin.b.shape[1]
    return res.x[:m], float(np.median(times))


def reference(cells, snap, period):
    _, ekf, mpc = cells[0]
    z = ekf.x
    u_prev = mpc.u_now(snap, {})
    lin = mpc.linearise(z, np.clip(u_prev, mpc.u_min, mpc.u_max))
    spec = mpc.spec(snap, period)
    free = dataclasses.replace(spec, du_first=mpc.u_max - mpc.u_min, du_max=mpc.u_max - mpc.u_min)
    first, osqp_s = osqp_warm(lin, free, u_prev)
    ref = do_mpc_reference(lin, free, u_prev)
    return first, osqp_s, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=1000)
    ap.add_argument("--warm-h", type=float, default=2.25)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--loop-from-h", type=float, default=2.0, help="whole loop: warm at 60 s to this plant time")
    ap.add_argument("--loop-ticks", type=int, default=1800, help="whole loop: ticks at --period after the warm-up")
    ap.add_argument("--fouling", type=float, default=0.2,
                    help="whole loop: col2's adsorbent capacity factor from the start (1: the shipped line, "
                         "whose first fits come at ~11.5 h: --loop-from-h 11.4)")
    ap.add_argument("--workers", default="thread,process",
                    help="whole loop: the slow carousel work in these workers, beside it on the control thread")
    ap.add_argument("--blas-cpu", action="store_true",
                    help="instead: CPU against wall with the BLAS on every core and on one thread (claims 2 cores)")
    _machine.add_arguments(ap)
    args = ap.parse_args()
    if args.blas_cpu:
        _machine.claim(2, allow_fewer=args.allow_fewer_cores)
        print(_machine.load_line(2))
        blas_cpu(load_config(default_config_path()), args)
        print(_machine.load_line(2))
        return
    _machine.claim(1, allow_fewer=args.allow_fewer_cores)
    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    _machine.pin_to_one_core()
    print(_machine.load_line(1))
    config = load_config(default_config_path())
    plant = TwinPlant(config)
    cells, cascade = build(config)
    warm: dict[str, list[float]] = {k: [] for k in ("cell1 EKF", "cell1 MPC", "cell2 EKF", "cell2 MPC",
                                                    "cascade EKF", "cascade MPC")}
    while plant.t < args.warm_h * 3600:
        plant.advance(60.0)
        tick(cells, cascade, plant.snapshot(), plant.t, 60.0, warm)
    timing = {k: [] for k in warm}
    totals, held = [], {}
    for _ in range(args.ticks):
        plant.advance(args.period)
        snap = plant.snapshot()
        t0 = time.perf_counter()
        out = tick(cells, cascade, snap, plant.t, args.period, timing)
        totals.append(time.perf_counter() - t0)
        for unit, (_, res) in out.items():
            if res.held:
                held[unit] = held.get(unit, 0) + 1
    report(np.array(totals), timing, held, args)
    rows = [whole_loop(config, args, "inline")]
    if all_cores is not None and len(all_cores) >= 2:  # the worker gets the second core (the tick keeps one)
        os.sched_setaffinity(0, set(sorted(all_cores)[:2]))
    rows += [whole_loop(config, args, "worker", w) for w in args.workers.split(",") if w]
    _machine.pin_to_one_core()
    print_whole_loop(rows, args)
    sol, osqp_s, ref = reference(cells, plant.snapshot(), args.period)
    print(f"\nReference, the same cell1 MPC QP (rate limits off), both warm, tolerance {TOL:g}, one thread, "
          f"median of {REPEATS}:")
    print(f"  OSQP rebuild + warm re-solve:      {osqp_s * 1e3:8.2f} ms   first move {np.round(sol, 3)}")
    if isinstance(ref, str):
        print(f"  do-mpc: {ref}")
    else:
        u0, setup, solve_s = ref
        print(f"  do-mpc (CasADi + IPOPT) make_step: {solve_s * 1e3:8.2f} ms   first move {np.round(u0, 3)}"
              f"   (built once: {setup:.2f} s, linearisation as time-varying parameters)")
        print(f"  OSQP faster by {solve_s / osqp_s:.2f}x")
    print(_machine.load_line(1))


def whole_loop(config, args, slow_work: str, worker: str = "thread") -> dict:
    """The production tick, ``ControlLoop.step``: every estimator (cells, cascade, carousel), every
    MPC, the guard, the alarms and anomaly checks, all loops in auto, writes applied to the twin.
    Warmed at a 60 s period to ``--loop-from-h``, then ``--loop-ticks`` at ``--period`` (module
    docstring: the span holds the carousel's capacity fits)."""
    from controllers import carousel_worker as cw
    from controllers.loop import ControlLoop, every_loop

    plant = TwinPlant(config)
    if args.fouling < 1.0:
        inject(plant, Malfunction(kind="adsorbent_fouling", target="col2", severity=1.0 - args.fouling, onset_s=0.0))
    with ControlLoop(config, target="twin", session="standalone", modes=every_loop(config, "auto"),
                     control_period_s=args.period, slow_work=slow_work, worker=worker) as loop:
        while plant.t < args.loop_from_h * 3600:  # warm-up: the same loop ticked every 60 s
            plant.advance(60.0)
            plant.write(loop.step(plant.snapshot(), plant.t).writes)
        carousel = next(u for u in loop.units if u.name == "carousel").ekf
        fits_before, t_loop = len(carousel.fit_log), plant.t
        ms, cpu0, wall0 = [], os.times(), time.perf_counter()
        for _ in range(args.loop_ticks):
            plant.advance(args.period)
            snap = plant.snapshot()
            t0 = time.perf_counter()
            res = loop.step(snap, plant.t)
            ms.append((time.perf_counter() - t0) * 1e3)
            plant.write(res.writes)
        cpu1, wall1 = os.times(), time.perf_counter()
        fits = carousel.fit_log[fits_before:]
    a = np.array(ms)
    nice = f", nice +{cw.WORKER_NICE}" if worker == "process" and cw.WORKER_NICE else ""
    return {"mode": f"{slow_work} ({worker}{nice})" if slow_work != "inline" else "inline (on the control thread)",
            "p50": np.percentile(a, 50), "p99": np.percentile(a, 99), "max": a.max(), "fits": fits,
            "from_h": t_loop / 3600, "cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
            "wall_s": wall1 - wall0, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1}


def blas_cpu(config, args) -> None:
    """CPU against wall of the component ticks with the process's BLAS on every core (as a process
    started without OPENBLAS_NUM_THREADS) and on one thread (as ``ControlLoop`` sets it), unpinned."""
    from threadpoolctl import threadpool_limits

    cores = _machine.available_cores()
    plant = TwinPlant(config)
    cells, cascade = build(config)
    while plant.t < args.warm_h * 3600:
        plant.advance(60.0)
        tick(cells, cascade, plant.snapshot(), plant.t, 60.0, _timing())
    print(f"\nBLAS threads, {args.ticks} component ticks at {args.period:g} s each way, on {cores} cores (unpinned)")
    for threads in (cores, 1, cores, 1):
        with threadpool_limits(limits=threads, user_api="blas"):
            ms, cpu0, wall0 = [], os.times(), time.perf_counter()
            for _ in range(args.ticks):
                plant.advance(args.period)
                snap = plant.snapshot()
                t0 = time.perf_counter()
                tick(cells, cascade, snap, plant.t, args.period, _timing())
                ms.append((time.perf_counter() - t0) * 1e3)
            cpu1, wall = os.times(), time.perf_counter() - wall0
        cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        print(f"  BLAS threads {threads}: CPU {cpu:6.1f} s for {wall:6.1f} s wall ({cpu / wall:.2f} cores busy)   "
              f"tick p50 {np.percentile(ms, 50):6.2f} ms   p99 {np.percentile(ms, 99):6.2f} ms")


def _timing() -> dict[str, list[float]]:
    return {k: [] for k in ("cell1 EKF", "cell1 MPC", "cell2 EKF", "cell2 MPC", "cascade EKF", "cascade MPC")}


def print_whole_loop(rows: list[dict], args) -> None:
    print(f"\nWhole loop (ControlLoop.step, carousel included, all loops auto), {args.loop_ticks} ticks at "
          f"{args.period:g} s from {rows[0]['from_h']:.2f} h, col2 capacity x {args.fouling:g} (its fits and switch)")
    for r in rows:
        ok = r["p99"] < GOAL_LOOP_P99_MS and r["max"] < GOAL_LOOP_MAX_MS
        fits = ", ".join(f"col{f['column']} {f['seconds']:.2f} s (data {f['t'] / 3600:.3f} h, applied "
                         f"{f['applied'] - f['t']:.0f} s later)" for f in r["fits"]) or "none"
        print(f"  {r['mode']:34s} p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms   max {r['max']:8.2f} ms   "
              f"goal p99 < {GOAL_LOOP_P99_MS:.0f}, max < {GOAL_LOOP_MAX_MS:.0f} ms: {'met' if ok else 'NOT met'}")
        print(f"  {'':34s} CPU {r['cpu_s']:.1f} s for {r['wall_s']:.1f} s wall (plant included; this process, "
              f"on {r['cores']} core(s)); fits: {fits}")


def report(totals, timing, held, args) -> None:
    ms = totals * 1e3
    p50, p99, mx = np.percentile(ms, 50), np.percentile(ms, 99), ms.max()
    print(f"Control tick, default line, {args.ticks} ticks at {args.period:g} s, one core")
    print(f"  total   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   max {mx:7.2f} ms   "
          f"goal p99 < {GOAL_S * 1e3:.0f} ms: {'met' if p99 < GOAL_S * 1e3 else 'NOT met'}")
    for k, v in timing.items():
        a = np.array(v) * 1e3
        print(f"  {k:12s} p50 {np.percentile(a, 50):7.2f} ms   p99 {np.percentile(a, 99):7.2f} ms   max {a.max():7.2f} ms")
    print(f"  held MPC results: {held or 'none'}")


if __name__ == "__main__":
    main()
