"""Advance one unit's ODE over a synchronisation step with its inputs held constant.

Stiff systems (fast mass transfer against hours-long hold-ups) are integrated with scipy's BDF.
A unit may offer ``jac_sparsity()`` (a scipy.sparse pattern, used for finite-difference
Jacobians with column grouping) or ``jacobian(t, x, u, p)`` (analytic, dense or sparse); both
make a large unit's step much cheaper.

This is the stateless path (a new scipy solver per call): for one-off integrations, fits and
tests, and the reference the flowsheet's own integrators are checked against
(``Flowsheet(solver="scipy")``). The flowsheet steps its blocks with ``twin.rosenbrock``
instead, kept across steps, for speed and because scipy 1.17's LSODA leaks native memory on
every call (about 0.7 KB for one state, more for larger ones; invisible to tracemalloc):

    import resource; from scipy.integrate import solve_ivp
    for _ in range(20000): solve_ivp(lambda t, y: -y, (0, 1), [1.0], method="LSODA")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # +14 MB; with BDF +1.6 MB
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from .unit import Unit


class IntegrationError(RuntimeError):
    pass


def advance(
    unit: Unit,
    t0: float,
    t1: float,
    x0: np.ndarray,
    u: np.ndarray,
    p: Any,
    *,
    rtol: float = 1e-6,
    atol: float | np.ndarray = 1e-9,
    method: str | None = None,
    first_step: float | None = None,
) -> np.ndarray:
    """State at ``t1`` starting from ``x0`` at ``t0`` with inputs ``u`` held (zero-order hold).

    ``method`` defaults to the unit's ``preferred_method`` (small units integrate far faster
    with LSODA, whose stiffness switching costs nothing on each restart) or else BDF.
    """
    method = method or getattr(unit, "preferred_method", "BDF")
    if t1 <= t0:
        return np.array(x0, dtype=float, copy=True)

    def f(t: float, x: np.ndarray) -> np.ndarray:
        return unit.derivatives(t, x, u, p)

    kwargs: dict[str, Any] = {}
    if first_step is not None and method == "BDF":
        # BDF restarts at order 1 on every call; starting it at the step size it had reached
        # (a steady plant takes whole synchronisation steps) saves most LU factorisations.
        kwargs["first_step"] = min(first_step, t1 - t0)
    if method in ("BDF", "Radau", "LSODA"):
        jac = getattr(unit, "jacobian", None)
        if jac is not None:
            kwargs["jac"] = lambda t, x: jac(t, x, u, p)
        else:
            sparsity = getattr(unit, "jac_sparsity", None)
            if sparsity is not None and method != "LSODA":
                kwargs["jac_sparsity"] = sparsity()
    sol = solve_ivp(f, (t0, t1), x0, method=method, rtol=rtol, atol=atol, **kwargs)
    if not sol.success:
        raise IntegrationError(f"{getattr(unit, 'name', unit)}: {sol.message} (t={t0}..{t1})")
    return sol.y[:, -1]
