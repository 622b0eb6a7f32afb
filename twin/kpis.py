"""Key performance indicators of a run, computed from the plant's ledger and units.

Definitions (all over the run, from t = 0):
- ``tb_purity_pct``: Tb / Σ rare earths of the line's ``species`` in the cascade raffinate
  collected (REO basis, as rare-earth purity is quoted in trade: Ln2O3, CeO2, Pr6O11, Tb4O7; the
  shipped line: Tb / (Dy + Tb + Nd + Pr)); ``tb_purity_final_pct`` is the cascade's
  instantaneous value at the end. ``dy_purity_pct`` likewise for Dy in the strip liquor.
- Product quality over time (``ProductQuality``, booked after every synchronisation step from the
  product collected in that step, Δn = n_outlet(t + dt) − n_outlet(t), REO basis like the mean):
  ``<p>_purity_min_pct`` the worst step, ``<p>_off_spec_h`` the time and ``<p>_off_spec_kg`` the
  element (kg Tb in the Tb product, kg Dy in the Dy product) collected in steps below
  ``<p>_purity_spec_pct`` (``PRODUCT_SPECS``: 99.5 % for both, the Tb purity alarm's L limit; a
  mean above the spec can hide hours below it). Steps that collect no rare earth are skipped.
- ``tb_recovery_pct``: Tb leaving in the raffinate / Tb leaving the cascade (raffinate + strip);
  ``dy_recovery_pct``: Dy in the strip / Dy leaving the cascade.
- ``adsorption_hree_recovery_pct``: 1 − (Dy+Tb lost to raffinate, wash and regenerant)/(Dy+Tb fed);
  ``adsorption_rejection_pct``: per element of the line that is not a rare earth
  (``pilot_config.base.rejected``; the shipped line: Fe, Al, U, Th), 1 − (eluted)/(fed).
- ``current_efficiency_pct`` per cell: Tb deposited · 3F / charge passed;
  ``specific_energy_kWh_per_kg_Tb``: electrical energy / Tb deposited.
- Where the Tb metal came from (``salt_origin_kpis``): the melt, the TbCl3 store and, through it,
  the cascade are each well mixed, so the Tb deposited is attributed pro rata to what entered the
  melt over the run, ``tb_metal_from_<o>_kg = tb_deposited_kg · n_o / Σ n_o`` with o = cascade
  (store draws of cascade Tb), stock (draws of the initial store stock) and melt_charge (the
  cells' initial TbCl3). ``tbcl3_store_kg``, and ``salt_stock_days`` the store divided by the
  draw of the last step (None while nothing is drawn).
- ``organic_inventory_L``; ``mass_balance_error``: per element (see ``twin.ledger``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pilot_config.base import (
    FARADAY_C_PER_MOL,
    MOLAR_MASS_G_PER_MOL,
    rare_earths,
    rejected,
)

from .electrolysis import M_TBCL3
from .extraction import REO_G_PER_MOL

if TYPE_CHECKING:  # pragma: no cover
    from .plant import TwinPlant

#: product -> (cascade outlet, element, minimum purity %, REO basis)
PRODUCT_SPECS: dict[str, tuple[str, str, float]] = {"tb": ("raffinate", "Tb", 99.5), "dy": ("strip", "Dy", 99.5)}


def _pct(num: float, den: float) -> float | None:
    return float(100.0 * num / den) if den > 0 else None


class ReoBasis:
    """Rare-earth purity on the oxide-mass basis over the rare earths of ``species``:
    purity_e = w_e n_e / Σ_r w_r n_r, w = REO g per mol of element (the cascade's table,
    ``twin.extraction.REO_G_PER_MOL``, so the KPIs and the cascade's purity outputs agree)."""

    def __init__(self, species: tuple[str, ...]):
        self.idx = {s: i for i, s in enumerate(species)}
        ree = rare_earths(species)
        self.pos = {s: k for k, s in enumerate(ree)}
        self.ree = np.array([self.idx[s] for s in ree])
        self.w = np.array([REO_G_PER_MOL[s] for s in ree])

    def total(self, n: np.ndarray) -> float:
        """mol of rare earth in ``n`` (mol per species)."""
        return float(n[self.ree].sum())

    def purity(self, n: np.ndarray, element: str) -> float | None:
        """% of ``element`` in the amounts ``n``, None if they hold no rare earth."""
        if self.total(n) <= 0:
            return None
        w = self.w * n[self.ree]
        total = float(w.sum())
        return 100.0 * float(w[self.pos[element]]) / total if total > 1e-30 else 0.0


class ProductQuality:
    """Worst purity, time and amount off spec of each cascade product, step by step (see above)."""

    def __init__(self, line, specs: dict[str, tuple[str, str, float]] = PRODUCT_SPECS):
        self.block = line.flowsheet.blocks[line.extraction]
        self.species = line.species
        self.reo = ReoBasis(line.species)
        self.specs = specs
        self.last = {name: self._collected(outlet) for name, (outlet, _, _) in specs.items()}
        self.worst = dict.fromkeys(specs, np.inf)
        self.off_s = dict.fromkeys(specs, 0.0)
        self.off_mol = dict.fromkeys(specs, 0.0)

    def _collected(self, outlet: str) -> np.ndarray:
        return self.block.cumulative(outlet, self.species)[1 : 1 + len(self.species)]

    def after_step(self, dt: float) -> None:
        for name, (outlet, element, spec) in self.specs.items():
            now = self._collected(outlet)
            step, self.last[name] = now - self.last[name], now
            if self.reo.total(step) <= 1e-12:
                continue
            purity = self.reo.purity(step, element)
            self.worst[name] = min(self.worst[name], purity)
            if purity < spec:
                self.off_s[name] += dt
                self.off_mol[name] += float(step[self.reo.idx[element]])

    def kpis(self) -> dict:
        out: dict = {}
        for name, (_, element, spec) in self.specs.items():
            worst = self.worst[name]
            out[f"{name}_purity_min_pct"] = float(worst) if np.isfinite(worst) else None
            out[f"{name}_purity_spec_pct"] = spec
            out[f"{name}_off_spec_h"] = self.off_s[name] / 3600.0
            out[f"{name}_off_spec_kg"] = self.off_mol[name] * MOLAR_MASS_G_PER_MOL[element] / 1000.0
        return out


def compute_kpis(plant: "TwinPlant") -> dict:
    led, line = plant.ledger, plant.line
    reo, ix = plant.quality.reo, plant.quality.reo.idx
    raff = led.stream(line.extraction, "raffinate")
    strip = led.stream(line.extraction, "strip")
    fed = led.feed_in
    lost = sum(led.stream(line.adsorption, o) for o in ("raffinate", "wash", "regen"))
    eluted = led.stream(line.adsorption, "eluate")
    hree = [ix["Dy"], ix["Tb"]]
    sx = plant.flowsheet.blocks[line.extraction]
    kpis: dict = {
        "tb_purity_pct": reo.purity(raff, "Tb"),
        "tb_purity_final_pct": 100.0 * sx.y[sx.output_index["tb_purity"]],
        "dy_purity_pct": reo.purity(strip, "Dy"),
        **plant.quality.kpis(),
        "tb_recovery_pct": _pct(raff[ix["Tb"]], raff[ix["Tb"]] + strip[ix["Tb"]]),
        "dy_recovery_pct": _pct(strip[ix["Dy"]], raff[ix["Dy"]] + strip[ix["Dy"]]),
        "tb_product_kg": raff[ix["Tb"]] * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0,
        "dy_product_kg": strip[ix["Dy"]] * MOLAR_MASS_G_PER_MOL["Dy"] / 1000.0,
        "adsorption_hree_recovery_pct": _pct(fed[hree].sum() - lost[hree].sum(), fed[hree].sum()),
        "adsorption_rejection_pct": {s: _pct(fed[ix[s]] - eluted[ix[s]], fed[ix[s]])
                                     for s in rejected(line.species)},
        "carousel_switches": sum("carousel switch" in e.text for e in plant.events),
        "organic_inventory_L": 1000.0 * sx.y[sx.output_index["organic_inventory"]],
    }
    deposited = charge = energy = 0.0
    for name in line.cells:
        cell = plant.flowsheet.blocks[name]
        d, q, e = line.cell_totals(cell)
        kpis[f"{name}_current_efficiency_pct"] = _pct(d * 3 * FARADAY_C_PER_MOL, q)
        deposited, charge, energy = deposited + d, charge + q, energy + e
    tb_kg = deposited * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
    kpis["current_efficiency_pct"] = _pct(deposited * 3 * FARADAY_C_PER_MOL, charge)
    kpis["specific_energy_kWh_per_kg_Tb"] = energy / 3.6e6 / tb_kg if tb_kg > 0 else None
    kpis["tb_deposited_kg"] = tb_kg
    kpis["tb_metal_product_kg"] = led.product_out[ix["Tb"]] * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
    kpis |= salt_origin_kpis(plant, tb_kg)
    kpis["mass_balance_error"] = plant.mass_balance()
    return kpis


def salt_origin_kpis(plant: "TwinPlant", tb_deposited_kg: float) -> dict:
    """Origin of the Tb metal and the TbCl3 stock left (definitions in the module docstring)."""
    salt, kg = plant.salt, MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
    melt0 = sum(plant.flowsheet.blocks[n].p.salt_tb0 for n in plant.line.cells)
    origins = {"cascade": salt.drawn_cascade, "stock": salt.drawn_stock, "melt_charge": melt0}
    total = sum(origins.values())
    out = {f"tb_metal_from_{o}_kg": tb_deposited_kg * n / total if total > 0 else 0.0 for o, n in origins.items()}
    out["tb_into_store_kg"] = salt.into_store * kg
    out["tb_salt_prep_loss_kg"] = salt.lost * kg
    out["tbcl3_store_kg"] = salt.store * M_TBCL3
    out["salt_stock_days"] = salt.days_left()
    return out
