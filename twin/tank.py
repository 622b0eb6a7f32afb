"""Well-mixed buffer tank (the eluate tank between the adsorption carousel and the cascade).

States: liquid volume V (m3), moles n_i of each species, moles of H+ n_H, and the cumulative
outflow integrals ``cum_out_<sp>``, ``cum_out_H``, ``cum_out_volume``.

    dV/dt   = Q_in − Q_out_eff
    dn_i/dt = Q_in c_in,i − Q_out_eff n_i / V

With acidity control (``TankParams.acidity_setpoint``, mol/m3), a base/acid dosing loop drives
[H+] to the setpoint with time constant τ_pH: dn_H/dt += (H_sp·V − n_H)/τ_pH (protons are not
an element of the ledger; the dosing volume is negligible next to the tank's).

The pump cannot draw from an empty tank: Q_out_eff = Q_out · s(V), with s a smooth switch that
falls from 1 to 0 as V drops through ``low_volume`` (keeps the ODE well posed, no event needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pilot_config.base import SPECIES

from .unit import index_map


@dataclass(frozen=True)
class TankParams:
    capacity_m3: float
    low_volume_m3: float
    acidity_setpoint: float | None = None  # mol/m3; None: no acidity control
    acidity_time_constant_s: float = 600.0


class Tank:
    """A buffer tank as a Unit of (t, x, u, p)."""

    preferred_method = "LSODA"  # a small unit: cheap restarts every step

    def __init__(self, name: str, species: tuple[str, ...] = SPECIES):
        self.name = name
        self.species = species
        comps = (*species, "H")
        self.state_names = (
            "volume",
            *(f"n_{c}" for c in comps),
            *(f"cum_out_{c}" for c in comps),
            "cum_out_volume",
        )
        self.input_names = ("in_flow", *(f"in_{c}" for c in comps), "out_flow")
        self.output_names = ("level", "volume", "out_flow", *(f"conc.{c}" for c in comps))
        self._si = index_map(self.state_names)
        self._nc = len(comps)

    def initial_state(self, volume_m3: float, conc: np.ndarray) -> np.ndarray:
        """``conc``: mol/m3 of each species then H+ (length n_species + 1)."""
        x = np.zeros(len(self.state_names))
        x[0] = volume_m3
        x[1 : 1 + self._nc] = volume_m3 * np.asarray(conc, dtype=float)
        return x

    def _effective_out(self, x: np.ndarray, u: np.ndarray, p: TankParams) -> float:
        v = x[0]
        low = p.low_volume_m3
        s = 0.5 * (1.0 + np.tanh((v - low) / (0.05 * low + 1e-12)))
        return float(u[-1]) * s

    def derivatives(self, t: float, x: np.ndarray, u: np.ndarray, p: TankParams) -> np.ndarray:
        nc = self._nc
        v = max(x[0], 1e-12)
        q_in = u[0]
        c_in = u[1 : 1 + nc]
        q_out = self._effective_out(x, u, p)
        out_rate = q_out * x[1 : 1 + nc] / v
        dx = np.empty_like(x)
        dx[0] = q_in - q_out
        dx[1 : 1 + nc] = q_in * c_in - out_rate
        if p.acidity_setpoint is not None:
            dx[nc] += (p.acidity_setpoint * x[0] - x[nc]) / p.acidity_time_constant_s
        dx[1 + nc : 1 + 2 * nc] = out_rate
        dx[-1] = q_out
        return dx

    def outputs(self, t: float, x: np.ndarray, u: np.ndarray, p: TankParams) -> np.ndarray:
        nc = self._nc
        v = max(x[0], 1e-12)
        return np.array(
            [x[0] / p.capacity_m3, x[0], self._effective_out(x, u, p), *(x[1 : 1 + nc] / v)]
        )

    def inventory(self, x: np.ndarray, p: TankParams) -> np.ndarray:
        return x[1 : 1 + len(self.species)].copy()
