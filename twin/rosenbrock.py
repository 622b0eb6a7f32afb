"""Linearly implicit (Rosenbrock and Rosenbrock-W) integration of a unit's stiff ODE, kept per
unit across synchronisation steps.

Method (Hairer & Wanner, Solving ODEs II, §IV.7 and §IV.11): with W ≈ ∂f/∂x and γ the
diagonal of the tableau's Γ, one step of size h solves s linear systems with one matrix

    G u_i = f(t + α_i h, x_n + Σ_j a_ij u_j) + Σ_j (c_ij / h) u_j,    G = I/(h γ) − W
    x_n+1 = x_n + Σ_i m_i u_i,      error estimate e = Σ_i (m_i − m̂_i) u_i

(the form without matrix-vector products: a = αΓ⁻¹, c = diag(1/γ) − Γ⁻¹, m = bΓ⁻¹ from the
published (α, Γ, b, b̂); ``Tableau.from_gamma``). Two tableaus:

- ``RODAS3`` (Sandu et al. 1997): order 3 (embedded 2), stiffly accurate, L-stable, but only
  with the exact Jacobian W = J(x_n): a fresh Jacobian and factorisation every step.
- ``ROS34PW2`` (Rang & Angermann, BIT 45 (2005) 761–787): a W-method: order 3 (embedded 2)
  for *any* W, stiffly accurate, L-stable. So W and its LU may be kept over many steps and
  over synchronisation steps while the inputs did not jump; a rejected step with an old W
  refreshes it. This is what makes a 1000-state cascade cheap: a steady plant costs four
  right-hand sides and four triangular solves per 60 s step, with no factorisation.

(Checked in ``tests/test_solvers.py``: with a wrong, frozen W, ROS34PW2 still converges at
order 3 and RODAS3 drops to order 1.) Linear invariants (the element balances: wᵀf = inflow(u),
so wᵀJ = 0 at every x and u) are kept exactly by either tableau with an analytic Jacobian,
whatever x the kept W was evaluated at; with difference quotients, to their accuracy (~1e-9).

Step sizes: a synchronisation span is cut into equal substeps (one α, so one factorisation,
per span), h is kept unless the error asks for a smaller step or a ``KEEP_H`` times larger one,
and carried to the next span (the last ``LU_KEEP`` factorisations of a W are kept by α, so a
step size the controller returns to is not factored again); W is rebuilt when an input moved by more than ``INPUT_JUMP``
(relative) or the parameters changed (a fault), or after a rejected step with an old W.

Where W comes from (``system_for``): the unit's own structured solve ``linear_system(x, α)``
(the carousel, ``twin.adsorption_linalg``), else its analytic ``jacobian(t, x, u, p)`` (sparse:
SuperLU on α·I − J; the column ordering is a parameter, ``permc_spec``; measured on the
1041-state cascade: NATURAL 2.3 ms, COLAMD 3.4 ms, MMD_AT_PLUS_A 3.7 ms, MMD_ATA 4.9 ms per
factorisation, and NATURAL's solves the fastest too, 86 against 92-121 µs),
else forward differences (small units, dense LU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lu_factor, lu_solve
from scipy.sparse.linalg import splu

log = logging.getLogger(__name__)

SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 6.0
#: keep h (and so the factorisation) when the controller would grow it by less than this
KEEP_H = 1.3
#: inputs count as unchanged (W kept) when every entry moved by less than this, relatively
INPUT_JUMP = 5e-2
#: factorisations of G kept per W, by α (a step size the controller comes back to costs no LU)
LU_KEEP = 4


class StepFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Tableau:
    """A Rosenbrock tableau in the transformed form (a, c, m, e = m − m̂)."""

    name: str
    gamma: float
    a: np.ndarray
    c: np.ndarray
    m: np.ndarray
    e: np.ndarray
    alpha_sum: np.ndarray
    w_method: bool
    order: int = 3

    @property
    def plan(self):
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = _stage_plan(self)
            object.__setattr__(self, "_plan", plan)
        return plan

    @classmethod
    def from_gamma(cls, name, alpha, gamma, b, b_hat, *, w_method: bool) -> Tableau:
        """From the published form: (I − hγW) k_i = h f(x + Σ α_ij k_j) + hW Σ γ_ij k_j."""
        alpha, gamma = np.asarray(alpha, float), np.asarray(gamma, float)
        g_inv = np.linalg.inv(gamma)
        g = float(gamma[0, 0])

        def clean(v):  # exact zeros where the product is round-off (stages skipped on them)
            return np.where(np.abs(v) < 1e-13, 0.0, v)
        return cls(name, g, clean(np.tril(alpha @ g_inv, -1)), clean(np.tril(-g_inv, -1)),
                   clean(np.asarray(b) @ g_inv), clean((np.asarray(b) - np.asarray(b_hat)) @ g_inv),
                   alpha.sum(axis=1), w_method)


_G = 0.5
RODAS3 = Tableau.from_gamma(
    "RODAS3",
    [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0.75, -0.25, 0.5, 0]],
    [[_G, 0, 0, 0], [1, _G, 0, 0], [-0.25, -0.25, _G, 0], [1 / 12, 1 / 12, -2 / 3, _G]],
    [5 / 6, -1 / 6, -1 / 6, 0.5], [0.75, -0.25, 0.5, 0.0], w_method=False)

_G = 4.3586652150845900e-01
ROS34PW2 = Tableau.from_gamma(
    "ROS34PW2",
    [[0, 0, 0, 0], [8.7173304301691801e-01, 0, 0, 0],
     [8.4457060015369423e-01, -1.1299064236484185e-01, 0, 0], [0, 0, 1, 0]],
    [[_G, 0, 0, 0], [-8.7173304301691801e-01, _G, 0, 0],
     [-9.0338057013044082e-01, 5.4180672388095326e-02, _G, 0],
     [2.4212380706095346e-01, -1.2232505839045147e+00, 5.4526025533510214e-01, _G]],
    [2.4212380706095346e-01, -1.2232505839045147e+00, 1.5452602553351020e+00, _G],
    [3.7810903145819369e-01, -9.6042292212423178e-02, 0.5, 2.1793326075422950e-01], w_method=True)
TABLEAUS = {t.name: t for t in (RODAS3, ROS34PW2)}


def _stage_plan(tab: Tableau):
    """Per stage: (new stage point?, [(j, a_ij)], [(j, c_ij)]) with the zero entries left out."""
    plan = []
    for i in range(len(tab.m)):
        new_point = i > 0 and not np.array_equal(tab.a[i], tab.a[i - 1])
        plan.append((new_point, [(j, float(tab.a[i, j])) for j in range(i) if tab.a[i, j]],
                     [(j, float(tab.c[i, j])) for j in range(i) if tab.c[i, j]]))
    return plan


def rosenbrock_step(tab: Tableau, fun, t: float, y: np.ndarray, f0: np.ndarray, h: float, solve):
    """One step: (x_n+1, error vector). ``solve(r)`` applies G⁻¹ for α = 1/(hγ)."""
    ks: list[np.ndarray] = []
    fi = f0
    for i, (new_point, a_row, c_row) in enumerate(tab.plan):
        if new_point:  # stages sharing a point share its right-hand side
            if a_row:
                shift = np.zeros_like(y)
                for j, a in a_row:
                    shift += a * ks[j]
                fi = fun(t + tab.alpha_sum[i] * h, y + shift)
            else:
                fi = f0
        rhs = fi
        if c_row:
            rhs = fi.copy()
            for j, c in c_row:
                rhs += (c / h) * ks[j]
        ks.append(solve(rhs))
    dy, err = np.zeros_like(y), np.zeros_like(y)
    for k, mi, ei in zip(ks, tab.m, tab.e):
        if mi:
            dy += mi * k
        if ei:
            err += ei * k
    return y + dy, err  # the increment summed first: one rounding on x (a state at its bound stays)


def error_norm(err, y, y_new, rtol, atol) -> float:
    r = err / (atol + rtol * np.maximum(np.abs(y), np.abs(y_new)))
    return float(np.sqrt(r.dot(r) / r.size))


def step_factor(err: float) -> float:
    """Step-size factor from the error norm (local error of the order-2 embedded pair)."""
    if not np.isfinite(err):
        return FAC_MIN
    return min(FAC_MAX, max(FAC_MIN, SAFETY * max(err, 1e-12) ** (-1.0 / 3.0)))


# -- where W comes from ---------------------------------------------------------------------
class _SparseW:
    """α·I − J from an analytic (sparse or dense) Jacobian, factored with SuperLU."""

    def __init__(self, unit, t, x, u, p, permc_spec: str):
        jac = unit.jacobian(t, x, u, p)
        self.jac = sp.csc_matrix(jac) if not sp.issparse(jac) else jac.tocsc()
        self.eye = sp.identity(x.size, format="csc")
        self.permc_spec = permc_spec

    def factor(self, alpha: float):
        return splu((self.eye * alpha - self.jac).tocsc(), permc_spec=self.permc_spec).solve


class _DenseW:
    """α·I − J with J by forward differences (small units); G⁻¹ formed once per α (n ≤ 64:
    one matrix-vector product per stage instead of a LAPACK call with its overhead)."""

    def __init__(self, unit, t, x, u, p, f0):
        n = x.size
        self.jac = np.empty((n, n))
        for j in range(n):
            d = 1.5e-8 * max(abs(x[j]), 1.0)
            xp = x.copy()
            xp[j] += d
            self.jac[:, j] = (unit.derivatives(t, xp, u, p) - f0) / d

    def factor(self, alpha: float):
        g = alpha * np.eye(len(self.jac)) - self.jac
        if len(g) <= 64:
            inv = np.linalg.inv(g)
            if not np.all(np.isfinite(inv)):
                raise np.linalg.LinAlgError("singular iteration matrix")
            return inv.dot
        lu = lu_factor(g, check_finite=False)
        return lambda r: lu_solve(lu, r, check_finite=False)


class _StructuredW:
    """The unit's own solve of α·I − J (``linear_system``, inputs of its latest derivatives)."""

    def __init__(self, unit, x):
        self.unit, self.x = unit, x.copy()

    def factor(self, alpha: float):
        return self.unit.linear_system(self.x, alpha).solve


def tableau_for(unit) -> Tableau:
    """RODAS3 (exact W every step) for a unit with its own structured solve, whose factorisation
    costs little more than a right-hand side (the carousel: on ROS34PW2 half its steps were
    rejected, its embedded estimate having R(∞) = 0.48 on the stiff LDF modes); ROS34PW2 else."""
    return RODAS3 if hasattr(unit, "linear_system") else ROS34PW2


def system_for(unit, t, x, u, p, f0, permc_spec: str = "NATURAL"):
    if hasattr(unit, "linear_system"):
        return _StructuredW(unit, x)
    if hasattr(unit, "jacobian"):
        return _SparseW(unit, t, x, u, p, permc_spec)
    return _DenseW(unit, t, x, u, p, f0)


# -- the per-unit integrator ----------------------------------------------------------------
@dataclass
class SolverStats:
    steps: int = 0
    rejected: int = 0
    jacobians: int = 0
    factorisations: int = 0
    rhs: int = 0


@dataclass
class Rosenbrock:
    """One unit's integrator, kept across synchronisation steps: its step size, its W and the
    factorisation of G (reused while h and the inputs stay, W-methods only for W)."""

    unit: object
    tableau: Tableau = ROS34PW2
    rtol: float = 1e-5
    atol: float | np.ndarray = 1e-10
    permc_spec: str = "NATURAL"
    max_attempts: int = 100_000
    stats: SolverStats = field(default_factory=SolverStats)

    def __post_init__(self) -> None:
        self.h: float | None = None
        self.forget()

    def forget(self) -> None:
        """Drop W and its factorisation (the next step builds them afresh)."""
        self._w = self._solve = self._w_u = self._w_p = None
        self._alpha = None
        self._lus: dict[float, object] = {}
        self._w_fresh = False

    def __getstate__(self):  # factorisations are not copied (nor picklable): rebuilt on use
        state = dict(self.__dict__)
        state.update(_w=None, _solve=None, _w_u=None, _w_p=None, _alpha=None, _w_fresh=False, _lus={})
        return state

    def advance(self, t0: float, t1: float, x0: np.ndarray, u: np.ndarray, p) -> np.ndarray:
        """State at ``t1`` from ``x0`` at ``t0``, inputs ``u`` held (zero-order hold)."""
        y = np.array(x0, dtype=float, copy=True)
        if t1 <= t0:
            return y
        if self._jumped(u, p):
            self.forget()
        fun = self._counted(u, p)
        t, f0 = t0, fun(t0, y)
        h = self.h or self._first_step(y, f0, t1 - t0)
        rejected = False
        for _ in range(self.max_attempts):
            remaining = t1 - t
            n = max(1, math.ceil(remaining / h - 1e-9))
            hs = remaining / n  # equal substeps: one α, so one factorisation, per span
            if hs < 1e-10 * max(1.0, abs(t)):
                break
            y_new, err = self._attempt(fun, t, y, f0, hs, u, p)
            if err > 1.0:
                self.stats.rejected += 1
                if self.tableau.w_method and not self._w_fresh:
                    self._w = None  # an old W: rebuild it here, retry the same step
                else:
                    h, rejected = hs * (0.1 if rejected else step_factor(err)), True
                continue
            self.stats.steps += 1
            h = self._next_h(h, hs, min(step_factor(err), 1.0) if rejected else step_factor(err))
            t, y, rejected = (t1 if n == 1 else t + hs), y_new, False
            self._w_fresh = False
            if n == 1:
                self.h = h
                return y
            f0 = fun(t, y)
        raise StepFailed(f"{getattr(self.unit, 'name', self.unit)}: {self.tableau.name} step size too "
                         f"small or too many steps at t={t:.6g} s (step {t0:.6g}..{t1:.6g} s)")

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _next_h(h: float, hs: float, fac: float) -> float:
        """Step after an accepted ``hs`` (≤ h, the span cut in equal parts): h is kept (so are
        α and the factorisation) unless the error asks for a smaller step or a much larger one."""
        proposal = hs * fac
        if proposal < h:
            return h if fac >= 1.0 else proposal
        return h if proposal <= KEEP_H * h else proposal

    def _counted(self, u, p):
        derivatives, stats = self.unit.derivatives, self.stats

        def fun(t, x):
            stats.rhs += 1
            return derivatives(t, x, u, p)
        return fun

    def _jumped(self, u, p) -> bool:
        if self._w_u is None:
            return False
        return p is not self._w_p or bool((np.abs(u - self._w_u) > INPUT_JUMP * np.abs(self._w_u)).any())

    def _first_step(self, y, f0, span: float) -> float:
        scale = self.atol + self.rtol * np.abs(y)
        d0, d1 = np.sqrt(np.mean((y / scale) ** 2)), np.sqrt(np.mean((f0 / scale) ** 2))
        h0 = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-3
        return min(span, h0)

    def _attempt(self, fun, t, y, f0, h, u, p):
        alpha = 1.0 / (h * self.tableau.gamma)
        try:
            if self._w is None or not (self.tableau.w_method or self._w_fresh):
                self._w = system_for(self.unit, t, y, u, p, f0, self.permc_spec)
                self._w_u, self._w_p, self._w_fresh, self._solve = np.array(u, copy=True), p, True, None
                self._lus = {}
                self.stats.jacobians += 1
            if self._solve is None or alpha != self._alpha:
                solve = self._lus.get(alpha)
                if solve is None:
                    solve = self._w.factor(alpha)
                    self.stats.factorisations += 1
                    if len(self._lus) >= LU_KEEP:
                        self._lus.pop(next(iter(self._lus)))
                    self._lus[alpha] = solve
                self._solve, self._alpha = solve, alpha
            y_new, e = rosenbrock_step(self.tableau, fun, t, y, f0, h, self._solve)
            err = error_norm(e, y, y_new, self.rtol, self.atol)
        except (RuntimeError, FloatingPointError, ValueError, np.linalg.LinAlgError) as exc:
            log.debug("%s: step of %.3g s failed: %s", getattr(self.unit, "name", "unit"), h, exc)
            self._solve, self._lus = None, {}
            return None, np.inf
        return y_new, (err if np.isfinite(err) else np.inf)
