"""Reduced EKF model of one electrolysis cell, built on the twin's ``ElectrolysisCell`` equations.

State z (SI): ``salt_Tb`` n_s (mol Tb3+ in the melt), ``cathode_Tb`` n_c (mol), ``temperature``
T (K), ``anode_effect`` s (0..1) and ``ce_factor`` f (multiplies the cell's ``eta_max``: a drop
of the current efficiency shows as f < 1; random walk). The cumulative states of the twin are
bookkeeping and are left out; the cathode metal is the fresh charge (it only changes at a tap).

    dz/dt = [F_feed − ṅ_dep, ṅ_dep, Q̇/(m·cp), (σ − s)/τ_ae, 0]     (twin.electrolysis, p.eta_max·f)

Inputs (tags of the cell, prefix e.g. ``CELL1``): current = ``<P>.CURRENT_SP`` (A; the
rectifier is current-controlled), heater = ``<P>.HEATER`` (kW → W), salt feed =
``<P>.SALT_FEED`` (g Tb/h → mol/s); an entry of ``applied`` with the same tag name wins.
Measurements: ``<P>.VOLTAGE`` (V), ``<P>.TEMP`` (degC), and the delayed analysers
``<P>.SALT_TB`` and ``<P>.CATHODE_TB`` (wt%). The voltage carries T, the salt content (through
ln x_TbCl3 and the mass-transfer overpotential) and the cathode Tb activity; the analysers pin
the salt content and, through the balance, the current efficiency.

A tap of the liquid cathode is a discrete event of the plant's sequence: the model mirrors it,
emptying n_c when its estimated cathode grade reaches ``<P>.TAP_SP``.
Published: ``<P>.SALT_TB.EST`` (wt%), ``<P>.CE.EST`` (%), ``<P>.CATHODE_TB.EST`` (wt%),
``<P>.ANODE_MARGIN.EST`` (anodic current density as % of the critical one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from scipy.integrate import solve_ivp

from pilot_config.base import ZERO_CELSIUS_K
from twin import electrolysis as elec
from twin.signals import Sample

from .estimation import Channel, DelayedEkf, EstimatorConfig, discretise, fd_jacobian

STATES = ("salt_Tb", "cathode_Tb", "temperature", "anode_effect", "ce_factor")
_FULL = (0, 1, 3, 9)  # indices of the first four reduced states in the twin's state vector
G_PER_H_PER_MOL_S = 3600.0 * elec.M_TB * 1e3  # salt feed tag scale (g Tb/h per mol/s)
_Y = {n: i for i, n in enumerate(elec.OUTPUT_NAMES)}
#: per-second process-noise standard deviations of the reduced states
Q_SD_PER_SQRT_S = np.array([2e-4, 2e-4, 0.05, 1e-3, 1.5e-3])


class CellModel:
    """``EstimationModel`` of one cell (see the module docstring)."""

    def __init__(self, name: str, p: elec.CellParams, tag_prefix: str | None = None,
                 voltage_model_sd: float = 0.01):
        self.unit = name
        self.p = p
        self.cell = elec.ElectrolysisCell(name)
        self.tp = tp = tag_prefix or name.upper()
        self.state_names = STATES
        self.channels = (
            Channel(f"{tp}.VOLTAGE", _Y["voltage"], float(np.hypot(0.01, voltage_model_sd)), False),
            Channel(f"{tp}.TEMP", _Y["temperature"], 0.5, False),
            Channel(f"{tp}.SALT_TB", _Y["salt_tb_fraction"], 0.03, True),
            Channel(f"{tp}.CATHODE_TB", _Y["cathode_tb_fraction"], 0.06, True),
        )
        self._x = self.cell.initial_state(p)
        self._p_cache: tuple[float, elec.CellParams] = (1.0, p)

    # -- helpers ---------------------------------------------------------------------------
    def params(self, f: float) -> elec.CellParams:
        if self._p_cache[0] != f:
            self._p_cache = (f, replace(self.p, eta_max=self.p.eta_max * f))
        return self._p_cache[1]

    def full(self, z: np.ndarray) -> np.ndarray:
        x = self._x.copy()
        x[list(_FULL)] = z[:4]
        return x

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        """(z0, P0 diagonal) from the cell's configured start."""
        x0 = self.cell.initial_state(self.p)
        z0 = np.append(x0[list(_FULL)], 1.0)
        return z0, np.array([0.5, 0.5, 2.0, 0.01, 0.05]) ** 2

    def rates(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        dx = self.cell.derivatives(0.0, self.full(z), u, self.params(float(z[4])))
        return np.append(dx[list(_FULL)], 0.0)

    # -- EstimationModel ---------------------------------------------------------------------
    def inputs(self, snapshot: Mapping[str, Sample], applied: Mapping[str, float]) -> np.ndarray:
        def value(tag: str, default: float) -> float:
            if tag in applied:
                return float(applied[tag])
            s = snapshot.get(tag)
            return float(s.value) if s is not None and np.isfinite(s.value) else default

        tp = self.tp
        return np.array([value(f"{tp}.CURRENT_SP", 0.0), value(f"{tp}.HEATER", 0.0) * 1e3,
                         value(f"{tp}.SALT_FEED", 0.0) / G_PER_H_PER_MOL_S, self.p.t_amb])

    def predict(self, z: np.ndarray, u: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """x⁻ = z(dt) with u held, by Dormand–Prince 5(4) (``RK45``) at rtol 1e-6, atol 1e-9;
        Φ = exp(A·dt) with A by forward differences. The reduced model is not stiff (its
        fastest mode is the anode effect, τ_ae = 30 s; the cell's ~1 s liquid-fraction modes
        are not in it), so an explicit pair takes about 40 right-hand sides per 60 s tick.
        Measured on 4 h of the shipped cell1 against Radau at rtol 1e-11: within 0.64 of the
        tolerance (1e-9 + 1e-6·|z|), 1.7 ms a call; LSODA: within 2.1 at 1.0 ms, but
        scipy 1.17's LSODA keeps ~1.4 KB of native memory per call (5 states), so a
        long-running loop's resident set grows with every tick. RK45 is pure Python/numpy."""
        a = fd_jacobian(lambda zz: self.rates(zz, u), z)
        sol = solve_ivp(lambda t, zz: self.rates(zz, u), (0.0, dt), z, method="RK45",
                        rtol=1e-6, atol=1e-9)
        return sol.y[:, -1], discretise(a, dt)

    def process_noise(self, z: np.ndarray, dt: float) -> np.ndarray:
        return np.diag(Q_SD_PER_SQRT_S ** 2 * dt)

    def _outputs(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        y = self.cell.outputs(0.0, self.full(z), u, self.params(float(z[4])))
        y = y.copy()
        y[_Y["temperature"]] -= ZERO_CELSIUS_K
        y[_Y["salt_tb_fraction"]] *= 100.0
        y[_Y["cathode_tb_fraction"]] *= 100.0
        return y

    def measure(self, z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._outputs(z, u), fd_jacobian(lambda zz: self._outputs(zz, u), z)

    def after_update(self, z: np.ndarray, snapshot: Mapping[str, Sample]) -> np.ndarray:
        z = z.copy()
        z[0], z[1] = max(z[0], 0.0), max(z[1], 0.0)
        z[3], z[4] = min(max(z[3], 0.0), 1.0), min(max(z[4], 0.05), 1.2)
        tap = snapshot.get(f"{self.tp}.TAP_SP")
        tap_w = tap.value / 100.0 if tap is not None else self.p.tap_fraction
        m_tb = z[1] * elec.M_TB
        w_cath = m_tb / (m_tb + self.p.fresh_metal_mol * self.p.metal_molar_mass)
        if w_cath >= tap_w:
            z[1] = 0.0
        return z

    def derived(self, z: np.ndarray, u: np.ndarray) -> dict[str, float]:
        y = self._outputs(z, u)
        i_a, i_c = y[_Y["anode_current_density"]], y[_Y["critical_current_density"]]
        return {"salt_tb_wt_pct": float(y[_Y["salt_tb_fraction"]]),
                "cathode_tb_wt_pct": float(y[_Y["cathode_tb_fraction"]]),
                "current_efficiency": float(y[_Y["current_efficiency"]]),
                "anode_current_density_A_per_cm2": float(i_a * 1e-4),
                "critical_current_density_A_per_cm2": float(i_c * 1e-4),
                "anode_margin_pct": float(100.0 * i_a / i_c) if i_c > 0 else 0.0,
                "voltage_V": float(y[_Y["voltage"]])}

    def published(self, z: np.ndarray, d: Mapping[str, float]) -> dict[str, float]:
        tp = self.tp
        return {f"{tp}.SALT_TB.EST": d["salt_tb_wt_pct"], f"{tp}.CE.EST": 100.0 * d["current_efficiency"],
                f"{tp}.CATHODE_TB.EST": d["cathode_tb_wt_pct"], f"{tp}.ANODE_MARGIN.EST": d["anode_margin_pct"]}


def cell_estimator(cell_cfg, config: EstimatorConfig | None = None) -> DelayedEkf:
    """The EKF of one cell from its ``pilot_config.electrolysis.CellConfig``."""
    model = CellModel(cell_cfg.name, elec.params_from_config(cell_cfg))
    z0, p0 = model.initial()
    return DelayedEkf(model, z0, p0, config)
