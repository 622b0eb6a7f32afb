"""Reduced estimator of the SX cascade: a parameter EKF on the twin's steady-state map plus a lag
and the stage hold-up's transient.

The full cascade (``twin.extraction.Cascade``, ~1,040 states) is too large for an EKF on the
control tick and most of it is not observable from six analysers. The reduced model keeps
what matters for control:

    θ = [ln f_kex, ln f_Dy, ln f_Tb]       Kex factor of the extractant (degradation) and the
                                            feed Dy, Tb content relative to the nominal feed
                                            (random walks)
    y = [Tb purity %, Dy recovery %, raffinate Dy, Tb, strip Dy, Tb (mg/L)]
    w = (θ, Q_org/Q_org°, Q_scrub/Q_scrub°) the steady map's arguments; s: w low-passed
    ds/dt = (w − s) / τ_s                   the hold-up's memory of w (τ_s = ``TAU_HOLDUP_S``)
    dy/dt = (g(θ, u) + T (θ − s_θ) − y) / τ g: the cascade's steady state, linearised

g(θ, u) comes from ``SteadyMap``: the steady state x_ss(θ, u) of the full model (Newton on the
analytic sparse Jacobian J, warm-started) and its sensitivities ∂x_ss/∂v = −J⁻¹ ∂f/∂v for
v ∈ {θ, Q_org, Q_scrub} (one sparse LU, five solves); ∂y/∂v by a directional difference of the
outputs. τ per output is the mean response time of the linearised cascade,
τ = C J⁻² b / (C J⁻¹ b) with b = ∂f/∂Q_org (the first-order model with the same area
as the step response; the cascade MPC's lag too). The map is refreshed when θ or the inputs
move by more than a small tolerance, or every ``refresh_s``; between refreshes g is the linear map.

The hold-up transient. As Kex or the feed moves, the Dy/Tb inventories of the stages (organic
loading, aqueous hold-up) fill or empty over hours, and some outlets answer with a transient
that has almost no steady gain: raffinate Tb and strip Dy to Kex. A lag G/(1 + τs) cannot
show it; the estimator then explains the mismatch by moving f_Dy/f_Tb (a false feed-ratio
change during an extractant loss). The linearised cascade's transfer function
H(s) = C (sI − J)⁻¹ b = G − μ₁ s + … gives the first moment μ₁ = C J⁻² b (the area between
the step response and its final value) per KPI and θ_j. The term T (θ − s_θ), a high-pass of θ
through the same lag, makes the model's transfer [G + T τ_s s/(1 + τ_s s)]/(1 + τ s), whose
first moment is G τ − T τ_s; so

    T = (G τ − μ₁) / τ_s

matches μ₁ for every KPI and θ_j (with G, τ, μ₁ from the latest map). τ_s = 1 h is the order
of the cascade's slowest mode (0.98 h at design); in the extractant-drift scenario
2400–3600 s hold the feed-ratio estimate within 12 % of the truth (its alarm: 15 %),
5400 s does not.

MV moves. The cascade MPC moves Q_scrub by up to 40 %, far outside the linear map's reach for
the same transients: a scrub cut 14 → 8 L/h takes the raffinate Tb from 108 to 53 mg/L where the
design gain says +22, and the strip Dy moves by 850 mg/L with a steady gain of ~0. Read as
information on θ, such a transient moves f_Dy/f_Tb (analyser samples gated as outliers and then
accepted with a faded P). The KPIs' transient after an MV move is therefore taken as known only
to within its own size, process noise on y while s_u catches up with w_u:

    var(y_i) += (κ Σ_u (|G_iu| + |T_iu|) |w_u − s_u|)² Δt / τ_i     κ = ``MV_TRANSIENT`` (1)

so during MV transients the analysers mostly correct y, not θ.

Measured: ``SX.TB_PURITY`` (%), ``SX.RAFF.Dy|Tb``, ``SX.STRIP.Dy|Tb`` (mg/L), all delayed
analysers. Inputs from the snapshot: ``TANK.OUT.FLOW_SP`` (feed), ``SX.ORG.FLOW_SP``,
``SX.SCRUB.FLOW_SP``, ``SX.SCRUB.ACID_SP``, ``SX.STRIP.FLOW_SP``, ``SX.STRIP.ACID_SP``.
Dy recovery (to the strip liquor) = Q_st·C_st,Dy / (Q_st·C_st,Dy + Q_raff·C_raff,Dy).
The Dy/Tb profile along the cascade is the steady profile at θ̂ (``derived``: stage<k>.aq.Dy, ...).
Published: ``SX.KEX.EST`` (factor), ``SX.FEED.Dy.EST``, ``SX.FEED.Tb.EST`` (mg/L),
``SX.TB_PURITY.EST`` and ``SX.DY_RECOVERY.EST`` (%).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import scipy.sparse.linalg as spl

from pilot_config.base import (
    L_PER_H,
    MOL_PER_L,
    MOLAR_MASS_G_PER_MOL,
    mg_per_L_to_mol_per_m3,
)
from twin import extraction as sx
from twin.signals import Sample

from .estimation import Channel, DelayedEkf, EstimatorConfig

THETA = ("ln_kex_factor", "ln_feed_Dy", "ln_feed_Tb")
KPIS = ("tb_purity_pct", "dy_recovery_pct", "raff_Dy_mg_L", "raff_Tb_mg_L", "strip_Dy_mg_L", "strip_Tb_mg_L")
MVS = ("organic_flow", "scrub_flow")  # the MPC's inputs, m3/s inside, L/h at the tags
ARGS = (*THETA, *MVS)  # the steady map's arguments w = (θ, Q_org/Q_org°, Q_scrub/Q_scrub°)
LAGS = tuple(f"lag.{n}" for n in ARGS)  # s: w low-passed at TAU_HOLDUP_S (the hold-up's memory of w)
#: s, the time constant of the hold-up transient (order of the cascade's slowest mode, ~1 h at design)
TAU_HOLDUP_S = 3600.0
#: κ: relative uncertainty of the linear map's KPI transient after an MV move (a 40 % scrub cut
#: moves the raffinate Tb by 2.5 × what the design gain says: the map is refreshed, the path is not)
MV_TRANSIENT = 1.0
INPUT_TAGS = {"feed_flow": "TANK.OUT.FLOW_SP", "organic_flow": "SX.ORG.FLOW_SP",
              "scrub_flow": "SX.SCRUB.FLOW_SP", "scrub_H": "SX.SCRUB.ACID_SP",
              "strip_flow": "SX.STRIP.FLOW_SP", "strip_H": "SX.STRIP.ACID_SP"}
_TAG_SCALE = {"feed_flow": L_PER_H, "organic_flow": L_PER_H, "scrub_flow": L_PER_H, "strip_flow": L_PER_H,
              "scrub_H": MOL_PER_L, "strip_H": MOL_PER_L}


log = logging.getLogger(__name__)


class SteadyMap:
    """Steady state of the full cascade and its sensitivities to θ and the two MVs."""

    def __init__(self, unit: sx.Cascade, p: sx.CascadeParams, x0: np.ndarray):
        self.unit, self.p0 = unit, p
        self.m = unit.n_stage_states
        self.x = np.array(x0, dtype=float)
        self.oi = unit.output_index
        self.ii = unit.input_index

    def apply(self, theta: np.ndarray, u: np.ndarray) -> tuple[sx.CascadeParams, np.ndarray]:
        """Parameters and inputs with θ applied (feed Dy, Tb scaled)."""
        u = u.copy()
        u[self.ii["feed_Dy"]] *= math.exp(theta[1])
        u[self.ii["feed_Tb"]] *= math.exp(theta[2])
        return replace(self.p0, kex_factor=self.p0.kex_factor * math.exp(theta[0])), u

    def kpis(self, x: np.ndarray, u: np.ndarray, p) -> np.ndarray:
        y = self.unit.outputs(0.0, x, u, p)
        o = self.oi
        q_r, q_s = y[o["raffinate.flow"]], y[o["strip.flow"]]
        r_dy, s_dy = y[o["raffinate.Dy"]], y[o["strip.Dy"]]
        mg_dy, mg_tb = MOLAR_MASS_G_PER_MOL["Dy"], MOLAR_MASS_G_PER_MOL["Tb"]
        rec = q_s * s_dy / max(q_s * s_dy + q_r * r_dy, 1e-30)
        return np.array([100.0 * y[o["tb_purity"]], 100.0 * rec, r_dy * mg_dy, y[o["raffinate.Tb"]] * mg_tb,
                         s_dy * mg_dy, y[o["strip.Tb"]] * mg_tb])

    def _f(self, xs: np.ndarray, u: np.ndarray, p) -> np.ndarray:
        full = np.zeros(len(self.unit.state_names))
        full[:self.m] = xs
        return self.unit.derivatives(0.0, full, u, p)[:self.m]

    def solve(self, theta: np.ndarray, u: np.ndarray, newton: int = 8) -> dict:
        """Steady state (warm Newton from the last one) and the linear map around it."""
        p, ua = self.apply(theta, u)
        x, lu = self._newton(ua, p, newton)
        f0 = self._f(x[:self.m], ua, p)
        cols = []
        for k in range(len(THETA) + len(MVS)):
            th, uu = theta.copy(), u.copy()
            if k < len(THETA):
                th[k] += 1e-4
                h = 1e-4
            else:
                h = 1e-3 * max(abs(u[self.ii[MVS[k - 3]]]), 1e-7)
                uu[self.ii[MVS[k - 3]]] += h
            pk, uk = self.apply(th, uu)
            cols.append((self._f(x[:self.m], uk, pk) - f0) / h)
        dfdv = np.column_stack(cols)
        dx = -lu.solve(dfdv)
        g = self._output_gains(x, theta, u, dx)
        tau = self._tau(lu, x, ua, p, dx[:, 3])
        mu1 = self._first_moments(lu, x, ua, p, dx)
        return {"theta": theta.copy(), "u": u.copy(), "y": self.kpis(x, ua, p), "G": g, "x": x.copy(),
                "dx": dx, "tau": tau, "mu1": mu1, "T": (g * tau[:, None] - mu1) / TAU_HOLDUP_S}

    def _newton(self, ua: np.ndarray, p, steps: int):
        """Newton on the stage balances from the last steady state; (x, LU of the last J)."""
        x = self.x.copy()
        for _ in range(steps):
            r = self._f(x[:self.m], ua, p)
            lu = spl.splu(self.unit.jacobian(0.0, x, ua, p)[:self.m, :self.m].tocsc())
            x[:self.m] = np.maximum(x[:self.m] - lu.solve(r), 0.0)
            if float(np.max(np.abs(r) * 3600.0 / (np.abs(x[:self.m]) + 1e-6))) < 1e-6:
                break
        self.x = x
        return x, lu

    def _output_gains(self, x: np.ndarray, theta: np.ndarray, u: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """∂KPI/∂v along each steady-state sensitivity dx[:, v] (directional differences)."""
        p, ua = self.apply(theta, u)
        y0 = self.kpis(x, ua, p)
        gy = np.empty((len(KPIS), dx.shape[1]))
        for k in range(dx.shape[1]):
            eps = 1e-3 / max(np.max(np.abs(dx[:, k]) / (np.abs(x[:self.m]) + 1e-3)), 1e-12)
            xp = x.copy()
            xp[:self.m] += eps * dx[:, k]
            pk, uk = (self.apply(theta + eps * np.eye(5)[k, :3], u) if k < 3 else (p, ua.copy()))
            if k >= 3:
                uk[self.ii[MVS[k - 3]]] += eps
            gy[:, k] = (self.kpis(xp, uk, pk) - y0) / eps
        return gy

    def _first_moments(self, lu, x, u, p, dx) -> np.ndarray:
        """μ₁ = C J⁻²b per KPI (rows) and θ_j (columns): the area between the step response and
        its final value (−H'(0) of H(s) = C (sI − J)⁻¹ b); ``dx`` = −J⁻¹b, so μ₁ = −C J⁻¹dx."""
        d2 = lu.solve(dx)
        y0 = self.kpis(x, u, p)
        mu1 = np.empty((len(KPIS), dx.shape[1]))
        for k in range(dx.shape[1]):
            eps = 1e-3 / max(np.max(np.abs(d2[:, k]) / (np.abs(x[:self.m]) + 1e-3)), 1e-12)
            xp = x.copy()
            xp[:self.m] += eps * d2[:, k]
            mu1[:, k] = -(self.kpis(xp, u, p) - y0) / eps
        return mu1

    def _tau(self, lu, x, u, p, dx_b) -> np.ndarray:
        """Mean response time per KPI to an organic-flow step: C J⁻²b / C J⁻¹b."""
        d2 = lu.solve(dx_b)  # J⁻¹ (J⁻¹ b) · (−1)  →  sign cancels in the ratio
        y0 = self.kpis(x, u, p)
        taus = []
        for vec in (dx_b, d2):
            eps = 1e-3 / max(np.max(np.abs(vec) / (np.abs(x[:self.m]) + 1e-3)), 1e-12)
            xp = x.copy()
            xp[:self.m] += eps * vec
            taus.append((self.kpis(xp, u, p) - y0) / eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = np.abs(taus[1] / taus[0])
        return np.where(np.isfinite(tau) & (tau > 60.0) & (tau < 86400.0), tau, 3600.0)


#: per-second process-noise sd of θ (random walks) and of the lagged KPIs
Q_THETA = np.array([1e-3, 1.5e-3, 1.5e-3])
Q_KPI = np.array([1e-4, 1e-4, 1e-4, 1e-3, 1e-3, 1e-4])


class CascadeModel:
    """``EstimationModel`` of the cascade (see the module docstring)."""

    def __init__(self, config, *, refresh_s: float = 1800.0, theta_tol: float = 0.03, u_tol: float = 0.02):
        xcfg, tank = config.extraction, config.eluate_tank
        p = sx.params_from_config(xcfg, tuple(config.species))
        self.unit_model = c = sx.Cascade("extraction", p)
        self.unit = "extraction"
        feed = np.array([mg_per_L_to_mol_per_m3(sp, tank.initial_composition_mg_per_L[sp]) for sp in c.species])
        u = c.design_inputs(p, feed,
                            (tank.acidity_setpoint_mol_per_L or tank.initial_acidity_mol_per_L) * MOL_PER_L)
        u[c.input_index["feed_flow"]] = tank.cascade_feed_L_per_h * L_PER_H
        self.u_nominal = u
        self.map = SteadyMap(c, p, c.steady_state(u, p))
        self.state_names = (*THETA, *KPIS, *LAGS)
        self.w_scale = np.concatenate([np.ones(3), [max(abs(u[c.input_index[n]]), 1e-12) for n in MVS]])
        self.channels = (Channel("SX.TB_PURITY", 0, 0.02, True), Channel("SX.RAFF.Dy", 2, 0.05, True),
                         Channel("SX.RAFF.Tb", 3, 2.5, True), Channel("SX.STRIP.Dy", 4, 30.0, True),
                         Channel("SX.STRIP.Tb", 5, 2.0, True))
        self.refresh_s, self.theta_tol, self.u_tol = refresh_s, theta_tol, u_tol
        self.lin = self.map.solve(np.zeros(3), u)
        self._since = 0.0
        self.no_steady_state = False  # the inputs admit no steady state (e.g. the organic pump stopped)
        self._w_now = self.args(np.zeros(3), u)  # w at the last prediction (its MV moves: process noise)

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        z0 = np.concatenate([np.zeros(3), self.lin["y"], self.args(np.zeros(3), self.u_nominal)])
        return z0, np.concatenate([np.full(3, 0.1) ** 2, (0.01 * np.abs(self.lin["y"]) + 1e-3) ** 2,
                                   np.full(3, 0.1) ** 2, np.full(len(MVS), 1e-6)])

    def args(self, theta: np.ndarray, u: np.ndarray) -> np.ndarray:
        """w = (θ, Q_org/Q_org°, Q_scrub/Q_scrub°): the steady map's arguments, all O(1)."""
        return np.concatenate([theta, [u[self.map.ii[n]] for n in MVS]]) / self.w_scale

    def initial_covariance(self) -> np.ndarray:
        """P₀: the diagonal of ``initial`` with s = θ (the line starts steady: fully correlated)."""
        p0 = np.diag(self.initial()[1])
        for j in range(3):
            p0[j, 9 + j] = p0[9 + j, j] = p0[j, j]
        return p0

    def inputs(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> np.ndarray:
        u = self.u_nominal.copy()
        for name, tag in INPUT_TAGS.items():
            s = snapshot.get(tag)
            v = applied.get(tag, s.value if s is not None else None)
            if v is not None and np.isfinite(v):
                u[self.map.ii[name]] = v * _TAG_SCALE[name]
        return u

    def linear(self, theta: np.ndarray, u: np.ndarray, dt: float = 0.0) -> dict:
        """The linear map about a recent steady state, refreshed when (θ, u) moved or aged."""
        lin = self.lin
        self._since += dt
        moved_u = np.max(np.abs(u - lin["u"]) / (np.abs(lin["u"]) + 1e-12))
        if (np.max(np.abs(theta - lin["theta"])) > self.theta_tol or moved_u > self.u_tol
                or self._since > self.refresh_s):
            self._since = 0.0
            try:
                self.lin = self.map.solve(theta, u)
            except RuntimeError as exc:  # SuperLU: a singular stage Jacobian, no steady state at u
                if not self.no_steady_state:
                    log.warning("cascade model: no steady state at these inputs (%s; a stopped flow?): "
                                "keeping the map about the last steady state", exc)
                self.no_steady_state = True
            else:
                if self.no_steady_state:
                    log.info("cascade model: a steady state again")
                self.no_steady_state = False
        return self.lin

    def target(self, z: np.ndarray, u: np.ndarray, lin: dict) -> np.ndarray:
        """What the KPIs relax to: the steady map plus the hold-up transient T (θ − s)."""
        return self.steady(z[:3], u, lin) + lin["T"][:, :3] @ (z[:3] - z[9:12])

    def steady(self, theta: np.ndarray, u: np.ndarray, lin: dict) -> np.ndarray:
        ii = self.map.ii
        du = np.array([u[ii[n]] - lin["u"][ii[n]] for n in MVS])
        return lin["y"] + lin["G"][:, :3] @ (theta - lin["theta"]) + lin["G"][:, 3:] @ du

    def predict(self, z: np.ndarray, u: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """y ← y + a (g(θ, u) + T (θ − s) − y), a = 1 − e^(−Δt/τ); s ← s + a_s (θ − s),
        a_s = 1 − e^(−Δt/τ_s) (module docstring); Φ analytic."""
        lin = self.linear(z[:3], u, dt)
        a = 1.0 - np.exp(-dt / lin["tau"])
        a_s = 1.0 - math.exp(-dt / TAU_HOLDUP_S)
        y = z[3:9] + a * (self.target(z, u, lin) - z[3:9])
        self._w_now = w = self.args(z[:3], u)
        s = z[9:] + a_s * (w - z[9:])
        phi = np.eye(z.size)
        phi[3:9, :3] = a[:, None] * (lin["G"][:, :3] + lin["T"][:, :3])
        phi[3:9, 3:9] = np.diag(1.0 - a)
        phi[3:9, 9:12] = -a[:, None] * lin["T"][:, :3]
        phi[9:12, :3] = a_s * np.eye(3)
        phi[9:, 9:] = (1.0 - a_s) * np.eye(len(ARGS))
        return np.concatenate([z[:3], y, s]), phi

    def process_noise(self, z: np.ndarray, dt: float) -> np.ndarray:
        """Random walks of θ and the KPIs, plus the KPIs' transient after an MV move, known to
        within its own size: var += (κ Σ_u (|G_u| + |T_u|) |w_u − s_u|)² Δt/τ (module docstring);
        w_u: the inputs of the ``predict`` just before (the filter calls the two in that order)."""
        lin = self.lin
        size = (np.abs(lin["G"][:, 3:]) + np.abs(lin["T"][:, 3:])) * self.w_scale[3:]
        moved = size @ np.abs(z[12:] - self._w_now[3:]) * MV_TRANSIENT
        var = np.concatenate([Q_THETA ** 2, (Q_KPI * np.maximum(np.abs(z[3:9]), 1.0)) ** 2 + moved ** 2 / lin["tau"],
                              np.zeros(len(ARGS))])
        return np.diag(var * dt)

    def measure(self, z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.zeros((len(KPIS), z.size))
        h[:, 3:9] = np.eye(len(KPIS))
        return z[3:9].copy(), h

    def after_update(self, z: np.ndarray, snapshot: Mapping[str, Sample]) -> np.ndarray:
        z = z.copy()
        z[:3] = np.clip(z[:3], math.log(0.2), math.log(5.0))
        z[9:12] = np.clip(z[9:12], math.log(0.2), math.log(5.0))
        return z

    def derived(self, z: np.ndarray, u: np.ndarray) -> dict[str, float]:
        lin = self.lin
        out = dict(zip(KPIS, z[3:9].tolist()))
        out.update({f"steady.{k}": v for k, v in zip(KPIS, self.steady(z[:3], u, lin).tolist())})
        x = lin["x"].copy()
        x[:self.map.m] = np.maximum(x[:self.map.m] + lin["dx"][:, :3] @ (z[:3] - lin["theta"]), 0.0)
        sa = self.unit_model.split(x)[2]
        so = self.unit_model.split(x)[3]
        dy, tb = self.unit_model.species.index("Dy"), self.unit_model.species.index("Tb")
        for k in range(self.unit_model.n):
            out[f"stage{k + 1}.aq.Dy"], out[f"stage{k + 1}.aq.Tb"] = float(sa[k, dy]), float(sa[k, tb])
            out[f"stage{k + 1}.org.Dy"], out[f"stage{k + 1}.org.Tb"] = float(so[k, dy]), float(so[k, tb])
        return out

    def published(self, z: np.ndarray, d: Mapping[str, float]) -> dict[str, float]:
        ii, u = self.map.ii, self.u_nominal
        mg_dy, mg_tb = MOLAR_MASS_G_PER_MOL["Dy"], MOLAR_MASS_G_PER_MOL["Tb"]
        return {"SX.KEX.EST": math.exp(z[0]),
                "SX.FEED.Dy.EST": u[ii["feed_Dy"]] * math.exp(z[1]) * mg_dy,
                "SX.FEED.Tb.EST": u[ii["feed_Tb"]] * math.exp(z[2]) * mg_tb,
                "SX.TB_PURITY.EST": float(z[3]), "SX.DY_RECOVERY.EST": float(z[4])}


def cascade_estimator(config, est_config: EstimatorConfig | None = None) -> DelayedEkf:
    """The reduced EKF of the cascade from the line's ``PilotLineConfig``."""
    model = CascadeModel(config)
    z0, p0 = model.initial()
    ekf = DelayedEkf(model, z0, p0, est_config)
    ekf.p = model.initial_covariance()
    return ekf
