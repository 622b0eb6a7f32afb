"""The twin's integrators (twin.rosenbrock): tableaus, order with an exact and a kept W, closed
forms, conservation, reuse of the factorisation across synchronisation steps, and the line's
KPIs against scipy's BDF/LSODA path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import twin.integrate
from pilot_config import default_config_path, load_config
from twin.flowsheet import Block, Flowsheet
from twin.kpis import compute_kpis
from twin.plant import TwinPlant
from twin.rosenbrock import RODAS3, ROS34PW2, Rosenbrock, rosenbrock_step, tableau_for


def test_rodas3_in_transformed_form_is_the_published_one():
    """Sandu et al. (1997) give RODAS3 as A31 = A41 = 2, A43 = 1, C21 = 4, C31 = C41 = 1,
    C32 = C42 = −1, C43 = −8/3, M = (2, 0, 1, 1), error k4; from_gamma must reproduce it."""
    a = np.zeros((4, 4))
    a[2, 0], a[3, 0], a[3, 2] = 2.0, 2.0, 1.0
    c = np.zeros((4, 4))
    c[1, 0], c[2, 0], c[2, 1], c[3, 0], c[3, 1], c[3, 2] = 4.0, 1.0, -1.0, 1.0, -1.0, -8.0 / 3.0
    np.testing.assert_allclose(RODAS3.a, a, atol=1e-14)
    np.testing.assert_allclose(RODAS3.c, c, atol=1e-14)
    np.testing.assert_allclose(RODAS3.m, [2.0, 0.0, 1.0, 1.0], atol=1e-14)
    np.testing.assert_allclose(RODAS3.e, [0.0, 0.0, 0.0, 1.0], atol=1e-14)
    for tab in (RODAS3, ROS34PW2):  # stiffly accurate: the solution is the last stage's point
        np.testing.assert_allclose(tab.m[:3], tab.a[3, :3], atol=1e-12)
        assert tab.m[3] == pytest.approx(1.0)


def _f(t, y):
    return np.array([-2.0 * y[0] + y[1] ** 2, y[0] - y[1] - y[1] ** 2])


def _jac(y):
    return np.array([[-2.0, 2.0 * y[1]], [1.0, -1.0 - 2.0 * y[1]]])


def _orders(tab, kept_w: bool) -> np.ndarray:
    y0 = np.array([1.0, 0.5])
    ref = solve_ivp(_f, (0.0, 1.0), y0, method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]
    w0 = _jac(y0) + np.array([[0.3, -0.2], [0.1, 0.4]])  # a W that is not the Jacobian anywhere
    errors = []
    for n in (10, 20, 40, 80):
        h, y = 1.0 / n, y0.copy()
        for k in range(n):
            g = np.eye(2) / (h * tab.gamma) - (w0 if kept_w else _jac(y))
            y, _ = rosenbrock_step(tab, _f, k * h, y, _f(k * h, y), h, lambda r, g=g: np.linalg.solve(g, r))
        errors.append(np.abs(y - ref).max())
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


def test_ros34pw2_keeps_order_three_with_a_kept_w_rodas3_does_not():
    """The W-method property that lets W and its LU be kept: ROS34PW2 converges at order 3
    with the exact Jacobian and with a wrong, frozen W; RODAS3 only with the exact one."""
    assert np.all(_orders(ROS34PW2, kept_w=False) > 2.8)
    assert np.all(_orders(ROS34PW2, kept_w=True) > 2.8)
    assert np.all(_orders(RODAS3, kept_w=False) > 2.8)
    assert np.all(_orders(RODAS3, kept_w=True) < 1.5)


class _Linear:
    """dx/dt = −K x + b, stiff (rates 1e3, 1, 1e-3 s-1); 1ᵀK = 0: Σx grows by exactly Σb·t,
    the analogue of an element balance."""

    name = "linear"

    def __init__(self, k: np.ndarray, analytic: bool):
        self.k = k
        if analytic:
            self.jacobian = lambda t, x, u, p: -self.k

    def derivatives(self, t, x, u, p):
        return -self.k @ x + u


def _stiff_k() -> np.ndarray:
    rates = np.array([1e3, 1.0, 1e-3])  # s-1: a fast exchange, an ordinary one, a slow one
    k = np.zeros((4, 4))
    for i, r in enumerate(rates):
        k[i, i] += r
        k[i + 1, i] -= r
        k[i + 1, i + 1] += r / 10.0
        k[i, i + 1] -= r / 10.0
    return k


@pytest.mark.parametrize("analytic", [True, False])
def test_stepper_matches_closed_form_and_conserves(analytic):
    k = _stiff_k()
    unit = _Linear(k, analytic)
    u = np.array([1e-3, 0.0, 0.0, 0.0])
    x0 = np.array([1.0, 0.0, 2.0, 0.5])
    stepper = Rosenbrock(unit, ROS34PW2, rtol=1e-6, atol=1e-10)
    x, t = stepper.advance(0.0, 60.0, x0, u, None), 60.0  # the fast transient: many steps
    lu = stepper.stats.factorisations
    for _ in range(119):  # two hours in synchronisation steps, W kept throughout
        x = stepper.advance(t, t + 60.0, x, u, None)
        t += 60.0
    aug = np.zeros((5, 5))  # closed form with the source: exp of [[−K, b], [0, 0]]
    aug[:4, :4], aug[:4, 4] = -k, u
    exact = (expm(aug * t) @ np.append(x0, 1.0))[:4]
    assert np.max(np.abs(x - exact) / (np.abs(exact) + 1e-3)) < 1e-4
    # Σx: exact with the analytic J (round-off only), to the difference quotients' accuracy else
    assert x.sum() == pytest.approx(x0.sum() + u.sum() * t, rel=1e-11 if analytic else 1e-8)
    assert stepper.stats.jacobians == 1  # built once, kept over 120 synchronisation steps
    assert stepper.stats.factorisations - lu <= 5  # equal substeps, h kept: one α for many spans


def test_cascade_keeps_its_factorisation_while_the_inputs_hold_and_rebuilds_on_a_jump():
    plant = TwinPlant(load_config(default_config_path()))
    plant.advance(1800.0)
    blk = plant.flowsheet.blocks["extraction"]
    assert tableau_for(blk.unit) is ROS34PW2
    st = blk.stepper
    x, u, p = blk.x.copy(), blk.u.copy(), blk.p
    t = plant.t
    for _ in range(3):
        x = st.advance(t, t + 60.0, x, u, p)
        t += 60.0
    jac, lu = st.stats.jacobians, st.stats.factorisations
    for _ in range(10):
        x = st.advance(t, t + 60.0, x, u, p)
        t += 60.0
    assert (st.stats.jacobians, st.stats.factorisations) == (jac, lu)
    jumped = u.copy()
    jumped[blk.input_index["feed_flow"]] *= 1.5
    x_new = st.advance(t, t + 60.0, x, jumped, p)
    assert st.stats.jacobians == jac + 1
    ref = solve_ivp(lambda s, y: blk.unit.derivatives(s, y, jumped, p), (t, t + 60.0), x, method="BDF",
                    jac=lambda s, y: blk.unit.jacobian(s, y, jumped, p), rtol=1e-10, atol=1e-12).y[:, -1]
    assert np.max(np.abs(x_new - ref) / (np.abs(ref) + 1e-3)) < 1e-4


def test_flowsheet_steps_without_scipy_solvers(monkeypatch):
    """No solve_ivp (so no LSODA and its per-call leak) on the flowsheet's path."""
    plant = TwinPlant(load_config(default_config_path()))

    def refuse(*args, **kwargs):
        raise AssertionError(f"solve_ivp called with method={kwargs.get('method')}")

    monkeypatch.setattr(twin.integrate, "solve_ivp", refuse)
    plant.advance(600.0)
    stepped = [b for b in plant.flowsheet.blocks.values() if b.x.size]
    assert len(stepped) >= 5 and all(b.stepper.stats.steps >= 10 for b in stepped)


def test_tank_washout_closed_form_on_the_rosenbrock_path():
    from twin.tank import Tank, TankParams

    nc = len(Tank("t").input_names) - 2
    tank = Tank("t")
    blk = Block("t", tank, TankParams(capacity_m3=1.0, low_volume_m3=0.01), tank.initial_state(0.5, np.ones(nc)))
    blk.u[:] = [1e-4, *np.zeros(nc), 1e-4]
    fs = Flowsheet([blk], [])
    for _ in range(60):
        fs.step(60.0)
    assert blk.x[1] == pytest.approx(0.5 * np.exp(-1e-4 * 3600.0 / 0.5), rel=2e-5)
    assert blk.stepper.stats.jacobians == 1


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="solver must be one of rosenbrock, scipy; got 'lsoda'"):
        Flowsheet([], [], solver="lsoda")


def _flat(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{pre}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[pre + k] = float(v)
    return out


def test_line_kpis_match_the_scipy_path_within_a_hundredth_of_a_point():
    runs = {}
    for solver in ("rosenbrock", "scipy"):
        plant = TwinPlant(load_config(default_config_path()))
        plant.flowsheet.solver = solver
        plant.advance(2 * 3600.0)
        runs[solver] = _flat(compute_kpis(plant))
    new, ref = runs["rosenbrock"], runs["scipy"]
    pct = [k for k in ref if k.endswith("_pct")]
    assert len(pct) >= 4
    for k in pct:
        assert abs(new[k] - ref[k]) < 0.01, k
    for k in ref:
        if k.startswith("mass_balance_error"):
            assert abs(new[k]) < 1e-9, k
        elif k.endswith("_kg"):
            assert new[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-9), k
