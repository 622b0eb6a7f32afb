"""Steady state of an equilibrium-stage cascade: Newton with line search, pseudo-transient fallback.

1. Start: acid totals and pH of each stage with no exchange, then a few passes of the linear
   metal balances at fixed D (each species' cascade is linear in a once D is fixed: the Kremser
   system), updating free extractant, acid released and pH between passes.
2. Newton on the stage equations of ``twin.sx.cascade`` with their analytic Jacobian: the step is
   capped (≤ 4 in ln C, ≤ 1 in pH) and backtracked (Armijo on ‖W·R‖, W the row scales) while
   it does not decrease the scaled residual or leaves the free extractant ≤ 0.
3. If Newton stalls, pseudo-transient continuation from the start of 1: implicit-Euler steps
   of the stage hold-up dynamics (M/Δτ − J) δ = R with hold-ups Q·τ per phase (equilibrium rows
   algebraic) and the step grown by switched evolution relaxation, Δτ ← Δτ·‖R_old‖/‖R_new‖
   (Mulder & van Leer, AIAA paper 85-1519; Kelley & Keyes, SIAM J. Numer. Anal. 35 (1998) 508),
   then Newton again.
0. Before any of it, the constant-D species are checked against the extractant they would bind
   (``capacity_demand``): no steady state exists where they alone need more than there is.
4. With an activity model, γ is held per stage while Newton converges, then re-evaluated at the
   converged ionic strength until it changes by < 1e-10 in log10 (successive substitution:
   γ varies slowly with I, two or three passes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from twin.sx import acid
from twin.sx.cascade import (
    Cascade,
    holdup_jacobian,
    jacobian,
    residual,
    row_scale,
    stage_state,
)
from twin.sx.distribution import ConstantD

log = logging.getLogger(__name__)
TOL = 1e-11
FLOOR = 1e-30


@dataclass(frozen=True)
class SteadyState:
    """Per stage (organic order): aqueous a and organic c (mol/m3, stages × species), pH, free
    [H+], [HSO4-], [SO4^2-] (mol/m3), free extractant (mol/m3) and how it was found."""

    a: np.ndarray
    c: np.ndarray
    ph: np.ndarray
    h: np.ndarray
    hso4: np.ndarray
    so4: np.ndarray
    e_free: np.ndarray
    log10_gamma1: np.ndarray
    method: str
    iterations: int
    residual: float


class NotConverged(RuntimeError):
    """No steady state found within the iteration limits."""


def _pack(case: Cascade, a, c, ph) -> np.ndarray:
    m = case.m
    xs = np.empty((case.n, 2 * m + 1))
    xs[:, :m] = np.log(np.maximum(a, FLOOR))
    xs[:, m:2 * m] = np.log(np.maximum(c, FLOOR))
    xs[:, 2 * m] = ph
    return xs.ravel()


def _ph_of_totals(case: Cascade, h_total, lg1):
    kc = acid.k_conc(case.acid_model, lg1)
    h = acid.free_h_from_total(np.maximum(h_total, 1e-12), case.s_total, kc)
    return -np.log10(h / 1000.0) - lg1


def initial_guess(case: Cascade, lg1: np.ndarray, passes: int = 1) -> np.ndarray:
    """Linear metal cascades at fixed D, alternated with acid and extractant updates."""
    flow = np.diag(case.q_aq) - case.aq_link
    h_total = np.linalg.solve(flow, case.aq_feed_h)
    ph = _ph_of_totals(case, h_total, lg1)
    e_free = np.full(case.n, case.e_total)
    a = np.zeros((case.n, case.m))
    for _ in range(passes):
        ln_d = np.stack([mod.log_d(ph, e_free, case.e_total, case.models)[0] for mod in case.models], 1)
        d = np.exp(np.clip(ln_d, -60, 60)) * case.efficiency[:, None]  # c ≈ η D a
        for i in range(case.m):
            system = flow - case.q_org * (case.org_link * d[:, i][None, :] - np.diag(d[:, i]))
            a[:, i] = np.linalg.solve(system, case.aq_feed[:, i] + case.q_org * case.org_feed[:, i])
        a = np.maximum(a, FLOOR)
        c = d * a
        bound = c @ case.e_per_ion
        c *= np.minimum(1.0, 0.95 * case.e_total / np.maximum(bound, 1e-300))[:, None]
        e_free = case.e_total - c @ case.e_per_ion
        released = case.q_org * ((c - (case.org_link @ c + case.org_feed)) @ case.h_per_ion)
        h_total = np.linalg.solve(flow, case.aq_feed_h + released)
        ph = _ph_of_totals(case, h_total, lg1)
    return _pack(case, a, c, ph)


def _evaluate(case, x, lg1, w):
    s = stage_state(case, x, lg1)
    if not np.all(s.e_free > 0):
        return s, None, np.inf
    r = residual(case, x, s)
    norm = float(np.linalg.norm(w * r))
    return s, r, norm if np.isfinite(norm) else np.inf


def _loading_note(case: Cascade, s) -> str:
    """Why there may be no steady state: the extractant nearly all bound (D models without a
    loading limit, such as constant D, can bind more than there is)."""
    free = float(np.min(s.e_free)) / case.e_total
    if free > 0.05:
        return ""
    return (f"; free extractant down to {100 * free:.1f} % of the total: the feed may load the "
            "extractant past what its D models allow")


def _cap(case: Cascade, step: np.ndarray) -> np.ndarray:
    xs = step.reshape(case.n, 2 * case.m + 1)
    big = max(np.max(np.abs(xs[:, :-1])) / 4.0, np.max(np.abs(xs[:, -1])), 1.0)
    return step / big


def newton(case: Cascade, x: np.ndarray, lg1: np.ndarray, max_iter: int = 60):
    """(x, iterations, scaled residual); raises NotConverged when it stalls."""
    w = row_scale(case)
    s, r, norm = _evaluate(case, x, lg1, w)
    if r is None:
        raise NotConverged("the start leaves no free extractant")
    for it in range(max_iter):
        if norm < TOL:
            return x, it, norm
        try:
            step = _cap(case, np.linalg.solve(jacobian(case, s), -r))
        except np.linalg.LinAlgError as exc:
            raise NotConverged(f"singular Jacobian at iteration {it}") from exc
        lam = 1.0
        while lam > 1e-6:
            s_new, r_new, n_new = _evaluate(case, x + lam * step, lg1, w)
            if n_new <= (1.0 - 1e-4 * lam) * norm:
                break
            lam *= 0.5
        else:
            raise NotConverged(f"line search failed at iteration {it} (scaled residual {norm:.3g}"
                               f"{_loading_note(case, s)})")
        x, s, r, norm = x + lam * step, s_new, r_new, n_new
    if norm < TOL:
        return x, max_iter, norm
    raise NotConverged(f"{max_iter} Newton iterations, scaled residual {norm:.3g}{_loading_note(case, s)}")


def pseudo_transient(case: Cascade, x: np.ndarray, lg1: np.ndarray, dt: float = 1e-2,
                     max_steps: int = 2000):
    """Implicit-Euler pseudo-time steps with SER growth until ‖W·R‖ < TOL."""
    w = row_scale(case)
    s, r, norm = _evaluate(case, x, lg1, w)
    if r is None:
        raise NotConverged("the start leaves no free extractant")
    for step_no in range(max_steps):
        if norm < TOL:
            return x, step_no, norm
        matrix = holdup_jacobian(case, s) / dt - jacobian(case, s)
        try:
            step = _cap(case, np.linalg.solve(matrix, r))
        except np.linalg.LinAlgError as exc:
            raise NotConverged(f"singular pseudo-transient matrix at step {step_no}") from exc
        s_new, r_new, n_new = _evaluate(case, x + step, lg1, w)
        if not np.isfinite(n_new):
            dt *= 0.1
            if dt < 1e-12:
                raise NotConverged(f"pseudo-time step collapsed at step {step_no}{_loading_note(case, s)}")
            continue
        dt = min(dt * max(min(norm / max(n_new, 1e-300), 10.0), 0.5), 1e15)
        x, s, r, norm = x + step, s_new, r_new, n_new
    raise NotConverged(f"{max_steps} pseudo-transient steps, scaled residual {norm:.3g}"
                       f"{_loading_note(case, s)}")


def _inner(case, x, lg1, method):
    if method == "pseudo-transient":
        x, it, norm = pseudo_transient(case, x, lg1)
        return x, it, norm, "pseudo-transient"
    try:
        x, it, norm = newton(case, x, lg1)
        return x, it, norm, "newton"
    except NotConverged as exc:
        if method == "newton":
            raise
        log.info("Newton did not converge (%s): pseudo-transient fallback", exc)
    x, it_pt, _ = pseudo_transient(case, initial_guess(case, lg1), lg1)
    x, it, norm = newton(case, x, lg1)
    return x, it_pt + it, norm, "pseudo-transient+newton"


def _valid_start(case: Cascade, x, lg1) -> bool:
    return bool(np.all(np.isfinite(x))) and np.isfinite(_evaluate(case, x, lg1, row_scale(case))[2])


def _gamma(case: Cascade, x, lg1):
    s = stage_state(case, x, lg1)
    i = acid.ionic_strength(s.h, case.s_total, case.cl_total, s.kc, s.a, case.charges)
    return case.acid_model.log10_gamma1(i)


def solve_steady(case: Cascade, method: str = "auto", x0: np.ndarray | None = None,
                 blas_threads: int | None = 1) -> SteadyState:
    """Steady state of ``case``; ``method``: auto (Newton, pseudo-transient fallback) | newton |
    pseudo-transient. ``x0``: a previous solution's unknowns (``state_vector``) to start from.
    ``blas_threads``: BLAS threads during the solve (``threadpoolctl``, when installed; None: as
    they are): the dense systems are small, and a multi-threaded BLAS on a shared machine makes
    each solve up to a hundred times slower."""
    limiter = _blas_limit(blas_threads)
    try:
        return _solve(case, method, x0)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _blas_limit(threads: int | None):
    if threads is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def capacity_demand(case: Cascade) -> tuple[float, int]:
    """(bound / total extractant, stage) at the stage where the constant-D species bind the most.
    Their balances and Murphree relations are linear and independent of pH and extractant, so
    their profile is exact: a demand ≥ 1 means no steady state with free extractant exists."""
    const = [i for i, mod in enumerate(case.models) if isinstance(mod, ConstantD)]
    n, eta = case.n, case.efficiency[:, None]
    eye = np.eye(n)
    bound = np.zeros(n)
    for i in const:
        d = case.models[i].d
        system = np.block([[case.aq_link - np.diag(case.q_aq), case.q_org * (case.org_link - eye)],
                           [-d * eta * eye, eye - (1.0 - eta) * case.org_link]])
        rhs = np.concatenate([-(case.aq_feed[:, i] + case.q_org * case.org_feed[:, i]),
                              (1.0 - eta[:, 0]) * case.org_feed[:, i]])
        bound += case.e_per_ion[i] * np.linalg.solve(system, rhs)[n:]
    k = int(np.argmax(bound))
    return float(bound[k] / case.e_total), k


def _solve(case: Cascade, method: str, x0: np.ndarray | None) -> SteadyState:
    demand, stage = capacity_demand(case)
    if demand >= 1.0:
        names = [case.species[i] for i, mod in enumerate(case.models) if isinstance(mod, ConstantD)]
        raise NotConverged(f"no steady state: the constant-D species {names} alone bind {demand:.2f}x "
                           f"the extractant at stage {stage}; lower the feed, or raise the extractant "
                           "or the organic flow")
    lg1 = np.zeros(case.n)
    if x0 is not None and not _valid_start(case, x0, lg1):
        log.info("the given start is outside the domain (no free extractant): cold start instead")
        x0 = None
    x = initial_guess(case, lg1) if x0 is None else x0
    if case.acid_model.activity != "none":
        lg1 = _gamma(case, x, lg1)
    total = 0
    for _ in range(50):
        x, it, norm, used = _inner(case, x, lg1, method)
        total += it
        if case.acid_model.activity == "none":
            break
        new = _gamma(case, x, lg1)
        done = np.max(np.abs(new - lg1)) < 1e-10
        lg1 = new
        if done:
            break
    else:
        raise NotConverged("activity coefficients did not settle in 50 passes")
    s = stage_state(case, x, lg1)
    hso4, so4 = acid.sulfate_split(s.h, case.s_total, s.kc)
    return SteadyState(s.a, s.c, s.ph, s.h, hso4, so4, s.e_free, lg1, used, total, norm)


def state_vector(case: Cascade, state: SteadyState) -> np.ndarray:
    """The unknowns of a solved state, to warm-start a neighbouring solve (sweeps, estimators)."""
    return _pack(case, state.a, state.c, state.ph)
