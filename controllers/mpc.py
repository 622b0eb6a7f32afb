"""Linear MPC on models linearised from the twin, solved by OSQP under a deadline.

Each controller (``mpc_cell``, ``mpc_cascade``) linearises its unit about the current estimate
and hands a ``LinearModel`` (discrete, step Δ) and an ``MpcSpec`` to ``solve``:

    δx_{k+1} = A δx_k + B u_k + c          (δx: state deviation from the estimate, δx_0 = 0)
    y_k      = C δx_k + D u_{k-1} + e      (k = 1..N; u in engineering units)

    min  Σ_k ‖y_k − r‖²_Wy + Σ_k ‖u_k − u_{k-1}‖²_WΔu + Σ_k ‖u_k − u_ref‖²_Wu + Σ ρ₁·s + ρ₂·s²
    s.t. u_min ≤ u_k ≤ u_max,  |u_0 − u_prev| ≤ Δu_first,  |u_k − u_{k-1}| ≤ Δu_max,
         y_min − s_k ≤ y_k ≤ y_max + s_k,  s_k ≥ 0     (output limits are soft: always feasible)

Condensed form: Y = Γ U + y_free, a QP in (U, S) of N·(m + ny) variables. OSQP (ADMM,
sparse, warm-startable, a hard ``time_limit``) solves it in well under a millisecond; each
controller keeps its solver (``QpSolver``: the QP's new matrices handed to it, warm-started from
the last solution); the deadline covers linearisation, QP build and solve. On a miss, an
infeasible or unsolved QP, the result is *held*: the MVs stay at ``u_prev`` and ``held_reason``
says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as sps
from scipy.linalg import expm

log = logging.getLogger(__name__)
BIG = 1e20


@dataclass(frozen=True)
class LinearModel:
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    cy: np.ndarray
    dy: np.ndarray
    ey: np.ndarray
    step_s: float


@dataclass(frozen=True)
class MpcSpec:
    horizon: int
    u_min: np.ndarray
    u_max: np.ndarray
    du_first: np.ndarray  # max |u_0 − u_prev| (rate limit × control period)
    du_max: np.ndarray  # max |u_k − u_{k−1}| per prediction step
    y_ref: np.ndarray  # nan: not tracked
    w_y: np.ndarray
    w_du: np.ndarray
    w_u: np.ndarray
    u_ref: np.ndarray
    y_min: np.ndarray  # -inf / inf: no limit
    y_max: np.ndarray
    rho_lin: float = 1e3
    rho_quad: float = 1e4


@dataclass(frozen=True)
class MpcResult:
    t: float
    unit: str
    status: str  # 'solved' | 'held'
    held_reason: str | None
    mv: Mapping[str, float]  # proposed (or held) MV values, engineering units
    predicted: Mapping[str, tuple[float, ...]]  # output and MV trajectories over the horizon
    cost: float
    iterations: int
    solve_time_s: float  # OSQP's own setup + solve
    total_time_s: float  # linearisation + QP + checks

    @property
    def held(self) -> bool:
        return self.status != "solved"


def zoh(a: np.ndarray, b: np.ndarray, c: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact zero-order-hold discretisation of dx/dt = A x + B u + c."""
    n, m = b.shape
    big = np.zeros((n + m + 1, n + m + 1))
    big[:n, :n], big[:n, n:n + m], big[:n, -1] = a, b, c
    e = expm(big * dt)
    return e[:n, :n], e[:n, n:n + m], e[:n, -1]


def prediction(model: LinearModel, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Γ, y_free): stacked outputs Y = Γ U + y_free over k = 1..N (δx_0 = 0).

    Block (k, j) of Γ (k = 1..N, j < k) is the Markov parameter C A^{k-1-j} B, plus D on j = k − 1:
    Γ is block lower-triangular Toeplitz, so the N parameters are computed once and laid out."""
    nx, m = model.b.shape
    ny = model.cy.shape[0]
    markov = np.empty((n, ny, m))  # C A^i B, i = 0..N-1
    x_free = np.empty((n, nx))  # δx_k of the free response, k = 1..N
    power, x = np.eye(nx), np.zeros(nx)
    for i in range(n):
        markov[i] = model.cy @ power @ model.b
        power = model.a @ power
        x = model.a @ x + model.c
        x_free[i] = x
    k, j = np.tril_indices(n)
    blocks = np.zeros((n, n, ny, m))
    blocks[k, j] = markov[k - j]
    blocks[np.arange(n), np.arange(n)] += model.dy
    yfree = (x_free @ model.cy.T + model.ey).ravel()
    return blocks.transpose(0, 2, 1, 3).reshape(n * ny, n * m), yfree


def _qp(model: LinearModel, spec: MpcSpec, u_prev: np.ndarray):
    """Dense condensed QP (small: N·(m + ny) variables); converted to sparse once for OSQP."""
    n, m, ny = spec.horizon, model.b.shape[1], model.cy.shape[0]
    gam, yfree = prediction(model, n)
    nu, ns = n * m, n * ny
    w_y = np.tile(np.where(np.isfinite(spec.y_ref), spec.w_y, 0.0), n)
    r = np.tile(np.nan_to_num(spec.y_ref), n)
    diff = np.eye(nu) - np.eye(nu, k=-m)
    d0 = np.zeros(nu)
    d0[:m] = u_prev
    w_du, w_u, u_ref = np.tile(spec.w_du, n), np.tile(spec.w_u, n), np.tile(spec.u_ref, n)
    p = np.zeros((nu + ns, nu + ns))
    p[:nu, :nu] = 2 * (gam.T @ (w_y[:, None] * gam) + diff.T @ (w_du[:, None] * diff) + np.diag(w_u))
    p[nu:, nu:] = 2 * spec.rho_quad * np.eye(ns)
    q = np.concatenate([2 * (gam.T @ (w_y * (yfree - r)) - diff.T @ (w_du * d0) - w_u * u_ref),
                        np.full(ns, spec.rho_lin)])
    eye_s = np.eye(ns)
    a_c = np.zeros((2 * nu + 3 * ns, nu + ns))
    a_c[:nu, :nu] = np.eye(nu)
    a_c[nu:2 * nu, :nu] = diff
    a_c[2 * nu:2 * nu + ns, :nu], a_c[2 * nu:2 * nu + ns, nu:] = gam, -eye_s  # y − s ≤ y_max
    a_c[2 * nu + ns:2 * nu + 2 * ns, :nu], a_c[2 * nu + ns:2 * nu + 2 * ns, nu:] = gam, eye_s  # y + s ≥ y_min
    a_c[2 * nu + 2 * ns:, nu:] = eye_s
    lo_y = np.tile(np.where(np.isfinite(spec.y_min), spec.y_min, -BIG), n) - yfree
    hi_y = np.tile(np.where(np.isfinite(spec.y_max), spec.y_max, BIG), n) - yfree
    du_lo = np.concatenate([u_prev - spec.du_first, np.tile(-spec.du_max, n - 1)])
    du_hi = np.concatenate([u_prev + spec.du_first, np.tile(spec.du_max, n - 1)])
    lo = np.concatenate([np.tile(spec.u_min, n), du_lo, np.full(ns, -BIG), lo_y, np.zeros(ns)])
    hi = np.concatenate([np.tile(spec.u_max, n), du_hi, hi_y, np.full(ns, BIG), np.full(ns, BIG)])
    const = float(np.sum(w_y * (yfree - r) ** 2) + np.sum(w_du[:m] * u_prev ** 2) + np.sum(w_u * u_ref ** 2))
    return p, q, a_c, lo, hi, gam, yfree, const


def _nonzeros(dense: np.ndarray, upper: bool = False) -> np.ndarray:
    """Where a dense matrix (``upper``: its upper triangle) is nonzero: its sparsity pattern."""
    mask = dense != 0.0
    if upper:
        mask &= np.tri(*dense.shape, dtype=bool).T
    return mask


def _csc(dense: np.ndarray, mask: np.ndarray) -> sps.csc_matrix:
    """The entries of ``dense`` at ``mask`` in CSC form, indices sorted: the matrix
    ``scipy.sparse.csc_matrix(dense)`` (or ``triu(..., format="csc")``) gives, built directly."""
    cols, rows = np.nonzero(mask.T)  # column-major: by column, rows ascending
    indptr = np.zeros(dense.shape[1] + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=dense.shape[1]), out=indptr[1:])
    return sps.csc_matrix((dense.T[mask.T], rows.astype(np.int32), indptr), shape=dense.shape)


def solve(model: LinearModel, spec: MpcSpec, u_prev: np.ndarray, *, deadline_s: float,
          started: float | None = None) -> dict:
    """Solve the QP once, from a cold start (``QpSolver.solve`` on a new solver)."""
    return QpSolver().solve(model, spec, u_prev, deadline_s=deadline_s, started=started)


class QpSolver:
    """The OSQP solver of one controller, kept from tick to tick.

    ``solve`` returns a dict with status ('solved' or a held reason), U (N×m), Y (N×ny), cost,
    iterations and solve time; ``started`` (perf_counter) is when the tick's work began.

    When the new QP has the sparsity pattern of the last one (same sizes and nonzeros: the usual
    case, the linearisation moves, its structure does not), its matrices and vectors are handed
    to the solver set up before (``OSQP.update``: scaling and the numeric factorisation redone,
    the symbolic one and the set-up kept) and the ADMM starts from the last solution (warm start).
    The QP moves little between ticks (a tick is a fraction of the prediction step), so the
    cascade's takes ~25 iterations instead of ~350 cold. The result is the same solution within
    OSQP's tolerance, and polishing (an equality-constrained solve on the active set found) makes
    it independent of the start where the active set agrees. Otherwise, and after a solve that
    did not succeed, the solver is set up anew (cold). A copy (``copy.deepcopy``, pickling)
    starts cold."""

    def __init__(self):
        self._osqp: osqp.OSQP | None = None
        self._pattern: tuple[np.ndarray, ...] | None = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def solve(self, model: LinearModel, spec: MpcSpec, u_prev: np.ndarray, *, deadline_s: float,
              started: float | None = None) -> dict:
        started = time.perf_counter() if started is None else started
        u_prev = np.clip(np.asarray(u_prev, dtype=float), spec.u_min, spec.u_max)
        p, q, a_c, lo, hi, gam, yfree, const = _qp(model, spec, u_prev)
        remaining = deadline_s - (time.perf_counter() - started)
        if remaining <= 0:
            return {"status": f"deadline missed before the solve ({deadline_s * 1e3:.2f} ms)",
                    "iterations": 0, "solve_time_s": 0.0}
        # decision variables scaled to their range (U = span·Ũ): OSQP converges in tens of iterations
        n, m, ny = spec.horizon, model.b.shape[1], model.cy.shape[0]
        span = np.concatenate([np.tile(np.where(np.isfinite(spec.u_max - spec.u_min), spec.u_max - spec.u_min,
                                                1.0), n), np.ones(n * ny)])
        span = np.maximum(span, 1e-9)
        p, a_c = p * np.outer(span, span), a_c * span
        pattern = (_nonzeros(p, upper=True), _nonzeros(a_c))
        solver, self._osqp = self._osqp, None  # kept again only after a successful solve
        if solver is not None and all(np.array_equal(a, b) for a, b in zip(pattern, self._pattern)):
            solver.update(Px=p.T[pattern[0].T], Ax=a_c.T[pattern[1].T], q=span * q, l=lo, u=hi)
            solver.update_settings(time_limit=remaining)
        else:
            solver = osqp.OSQP(algebra="builtin")  # named: the default probes for CUDA / MKL modules each call
            solver.setup(_csc(p, pattern[0]), span * q, _csc(a_c, pattern[1]), lo, hi, verbose=False,
                         time_limit=remaining, eps_abs=1e-4, eps_rel=1e-4, polishing=True, max_iter=20000,
                         warm_starting=True)
        self._pattern = pattern
        res = solver.solve(raise_error=False)
        info = res.info
        out = {"iterations": int(info.iter), "solve_time_s": float(info.run_time)}
        if info.status not in ("solved", "solved inaccurate"):
            out["status"] = f"QP not solved: {info.status}"  # the next solve sets up afresh
            return out
        self._osqp = solver
        u = res.x[:n * m] * span[:n * m]
        out.update(status="solved", U=u.reshape(n, m), Y=(gam @ u + yfree).reshape(n, ny),
                   cost=float(info.obj_val + const))
        return out


def log_transition(unit: str, previous: str | None, res: MpcResult) -> str:
    """Log a change between solved and held (not every held tick); returns the new state."""
    held_before = previous == "held"
    if res.held and not held_before:
        log.warning("%s MPC held: %s", unit, res.held_reason)
    elif not res.held and held_before:
        log.info("%s MPC solving again", unit)
    return "held" if res.held else "solved"


def result(t: float, unit: str, mv_names: tuple[str, ...], y_names: tuple[str, ...], sol: dict,
           u_prev: np.ndarray, started: float, deadline_s: float) -> MpcResult:
    """Wrap a solution (or a hold) as an ``MpcResult``; a solve past the deadline is held."""
    total = time.perf_counter() - started
    status = sol["status"]
    if status == "solved" and total > deadline_s:
        status = f"deadline missed: {total * 1e3:.2f} ms > {deadline_s * 1e3:.2f} ms"
    if status != "solved":
        return MpcResult(t, unit, "held", status, dict(zip(mv_names, map(float, u_prev))), {},
                         float("nan"), sol.get("iterations", 0), sol.get("solve_time_s", 0.0), total)
    pred = {n: tuple(sol["Y"][:, i].tolist()) for i, n in enumerate(y_names)}
    pred.update({n: tuple(sol["U"][:, i].tolist()) for i, n in enumerate(mv_names)})
    return MpcResult(t, unit, "solved", None, dict(zip(mv_names, sol["U"][0].tolist())), pred,
                     sol["cost"], sol["iterations"], sol["solve_time_s"], total)
