"""RODAS3: a stiffly accurate, L-stable Rosenbrock method of order 3 (embedded order 2), as a
scipy ``OdeSolver`` so ``solve_ivp`` (and ``twin.integrate.advance``) can run it.

Why: the carousel is a stiff method-of-lines system (~2000 states) advanced in 60 s
synchronisation steps. scipy's BDF restarts at order 1 with a fresh Jacobian and several
SuperLU factorisations on every call; a one-step linearly implicit method with the model's own
structured solve (``twin.adsorption_linalg``), and the step size carried over from the previous
call, needs a handful of steps per call. Linear invariants (the element balances) are kept
exactly by any Rosenbrock method with the exact Jacobian.

Scheme: ``twin.rosenbrock.RODAS3`` (Hairer & Wanner, Solving ODEs II, §IV.7; Sandu et al. 1997),
autonomous form (the inputs are held over a step), one step by ``twin.rosenbrock.rosenbrock_step``
with the error norm and step-size control of that module. The flowsheet steps the carousel with
the same tableau through ``twin.rosenbrock.Rosenbrock`` (kept across synchronisation steps);
this class is the ``solve_ivp`` face of it for ``twin.integrate.advance``.

The owner (the unit) provides ``linear_system(y, alpha)`` (an object whose ``solve(r)`` gives
G⁻¹ r for the inputs and parameters of the owner's latest ``derivatives`` call: they are fixed
over one ``solve_ivp`` call) and a ``step_hint`` attribute the solver reads and updates.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import DenseOutput, OdeSolver

from .rosenbrock import RODAS3, error_norm, rosenbrock_step, step_factor

GAMMA = RODAS3.gamma


class Rodas3(OdeSolver):
    """Rosenbrock RODAS3 with error control; bind an owner with ``rodas3_for(unit)``."""

    owner = None

    def __init__(self, fun, t0, y0, t_bound, vectorized=False, rtol=1e-3, atol=1e-6,
                 first_step=None, max_step=np.inf, **extraneous):
        super().__init__(fun, t0, y0, t_bound, vectorized)
        self.rtol, self.atol = rtol, np.asarray(atol, dtype=float)
        self.max_step = max_step
        self.f = self.fun(self.t, self.y)
        span = abs(t_bound - t0)
        hint = getattr(self.owner, "step_hint", None)
        h = first_step or hint or min(1.0, span)
        self.h = min(h, max_step, span) if span > 0 else h
        self.rejected = False
        self.nlu = 0

    def _attempt(self, h: float):
        system = self.owner.linear_system(self.y, 1.0 / (GAMMA * h))
        self.nlu += 1
        y_new, e = rosenbrock_step(RODAS3, self.fun, self.t, self.y, self.f, h, system.solve)
        return y_new, error_norm(e, self.y, y_new, self.rtol, self.atol)

    def _step_impl(self):
        remaining = self.t_bound - self.t
        while True:
            h = min(self.h, self.max_step)
            last = h >= remaining * (1.0 - 1e-12)
            h_step = remaining if last else h
            if h_step < 1e-10 * max(1.0, abs(self.t)):
                return False, "step size too small"
            try:
                y_new, err = self._attempt(h_step)
            except (RuntimeError, FloatingPointError):
                y_new, err = None, np.inf
            if y_new is not None and err <= 1.0:
                break
            self.h = h_step * (0.1 if self.rejected else _factor(err))
            self.rejected = True
        fac = min(_factor(err), 1.0) if self.rejected else _factor(err)
        self.rejected = False
        self.h = max(h, h_step * fac) if last else h_step * fac
        self.t_prev, self.y_prev = self.t, self.y
        self.t = self.t_bound if last else self.t + h_step
        self.y = y_new
        self.f = self.fun(self.t, self.y)
        if self.owner is not None:
            self.owner.step_hint = self.h
        return True, None

    def _dense_output_impl(self):
        return _Linear(self.t_prev, self.t, self.y_prev, self.y)


class _Linear(DenseOutput):
    def __init__(self, t_old, t, y_old, y):
        super().__init__(t_old, t)
        self.y_old, self.y = y_old, y

    def _call_impl(self, t):
        w = (np.asarray(t) - self.t_old) / (self.t - self.t_old)
        return self.y_old[:, None] * (1 - w) + self.y[:, None] * w if np.ndim(t) else \
            self.y_old * (1 - w) + self.y * w


def _factor(err: float) -> float:
    return step_factor(err)


def rodas3_for(owner) -> type[Rodas3]:
    """A ``Rodas3`` subclass bound to ``owner`` (a unit), usable as ``solve_ivp(method=...)``."""
    return type(f"Rodas3[{getattr(owner, 'name', 'unit')}]", (Rodas3,), {"owner": owner})
