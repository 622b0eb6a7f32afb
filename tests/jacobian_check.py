"""The check every analytic Jacobian test makes: the model's Jacobian equals central finite
differences of its derivatives, and its sparsity pattern holds every non-zero."""

from __future__ import annotations

import numpy as np


def assert_jacobian_matches(model, x, u, p, *, rtol: float = 1e-6) -> None:
    jac = model.jacobian(0.0, x, u, p).toarray()
    fd = np.empty_like(jac)
    for j in range(x.size):  # central differences: the settler hold-ups are curved in V_e
        h = 1e-7 * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        fd[:, j] = (model.derivatives(0.0, xp, u, p) - model.derivatives(0.0, xm, u, p)) / (2.0 * h)
    assert np.max(np.abs(jac - fd)) < rtol * np.max(np.abs(jac))
    assert np.all(fd[model.jac_sparsity().toarray() == 0] == 0.0)
