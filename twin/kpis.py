"""Key performance indicators of a run, computed from the plant's ledger and units.

Definitions (all over the run, from t = 0):
- ``tb_purity_pct``: Tb / (Dy + Tb + Nd + Pr) in the cascade raffinate collected (REO basis, as
  rare-earth purity is quoted in trade); ``tb_purity_final_pct`` is the instantaneous value at
  the end. ``dy_purity_pct`` likewise for Dy in the strip liquor.
- Product quality over time (``ProductQuality``, booked after every synchronisation step from the
  product collected in that step, Δn = n_outlet(t + dt) − n_outlet(t), REO basis like the mean):
  ``<p>_purity_min_pct`` the worst step, ``<p>_off_spec_h`` the time and ``<p>_off_spec_kg`` the
  element (kg Tb in the Tb product, kg Dy in the Dy product) collected in steps below
  ``<p>_purity_spec_pct`` (``PRODUCT_SPECS``: 99.5 % for both, the Tb purity alarm's L limit; a
  mean above the spec can hide hours below it). Steps that collect no rare earth are skipped.
- ``tb_recovery_pct``: Tb leaving in the raffinate / Tb leaving the cascade (raffinate + strip);
  ``dy_recovery_pct``: Dy in the strip / Dy leaving the cascade.
- ``adsorption_hree_recovery_pct``: 1 − (Dy+Tb lost to raffinate, wash and regenerant)/(Dy+Tb fed);
  ``adsorption_rejection_pct``: per Fe/Al/U/Th, 1 − (eluted)/(fed).
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

from pilot_config.base import FARADAY_C_PER_MOL, MOLAR_MASS_G_PER_MOL, REJECTED, SPECIES

from .electrolysis import M_TBCL3
from .extraction import reo_purity

if TYPE_CHECKING:  # pragma: no cover
    from .plant import TwinPlant

IDX = {s: i for i, s in enumerate(SPECIES)}
REE = ("Dy", "Tb", "Nd", "Pr")
#: product -> (cascade outlet, element, minimum purity %, REO basis)
PRODUCT_SPECS: dict[str, tuple[str, str, float]] = {"tb": ("raffinate", "Tb", 99.5), "dy": ("strip", "Dy", 99.5)}


def _pct(num: float, den: float) -> float | None:
    return float(100.0 * num / den) if den > 0 else None


def _purity(n: np.ndarray, sp: str) -> float | None:
    """REO-basis purity in % of the collected amounts ``n`` (mol per species), None if none."""
    if sum(n[IDX[s]] for s in REE) <= 0:
        return None
    return 100.0 * reo_purity(n, sp)


class ProductQuality:
    """Worst purity, time and amount off spec of each cascade product, step by step (see above)."""

    def __init__(self, line, specs: dict[str, tuple[str, str, float]] = PRODUCT_SPECS):
        self.block = line.flowsheet.blocks[line.extraction]
        self.specs = specs
        self.last = {name: self._collected(outlet) for name, (outlet, _, _) in specs.items()}
        self.worst = dict.fromkeys(specs, np.inf)
        self.off_s = dict.fromkeys(specs, 0.0)
        self.off_mol = dict.fromkeys(specs, 0.0)

    def _collected(self, outlet: str) -> np.ndarray:
        return self.block.cumulative(outlet, SPECIES)[1 : 1 + len(SPECIES)]

    def after_step(self, dt: float) -> None:
        for name, (outlet, element, spec) in self.specs.items():
            now = self._collected(outlet)
            step, self.last[name] = now - self.last[name], now
            if sum(step[IDX[s]] for s in REE) <= 1e-12:
                continue
            purity = 100.0 * reo_purity(step, element)
            self.worst[name] = min(self.worst[name], purity)
            if purity < spec:
                self.off_s[name] += dt
                self.off_mol[name] += float(step[IDX[element]])

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
    raff = led.stream(line.extraction, "raffinate")
    strip = led.stream(line.extraction, "strip")
    fed = led.feed_in
    lost = sum(led.stream(line.adsorption, o) for o in ("raffinate", "wash", "regen"))
    eluted = led.stream(line.adsorption, "eluate")
    hree = [IDX["Dy"], IDX["Tb"]]
    sx = plant.flowsheet.blocks[line.extraction]
    kpis: dict = {
        "tb_purity_pct": _purity(raff, "Tb"),
        "tb_purity_final_pct": 100.0 * sx.y[sx.output_index["tb_purity"]],
        "dy_purity_pct": _purity(strip, "Dy"),
        **plant.quality.kpis(),
        "tb_recovery_pct": _pct(raff[IDX["Tb"]], raff[IDX["Tb"]] + strip[IDX["Tb"]]),
        "dy_recovery_pct": _pct(strip[IDX["Dy"]], raff[IDX["Dy"]] + strip[IDX["Dy"]]),
        "tb_product_kg": raff[IDX["Tb"]] * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0,
        "dy_product_kg": strip[IDX["Dy"]] * MOLAR_MASS_G_PER_MOL["Dy"] / 1000.0,
        "adsorption_hree_recovery_pct": _pct(fed[hree].sum() - lost[hree].sum(), fed[hree].sum()),
        "adsorption_rejection_pct": {s: _pct(fed[IDX[s]] - eluted[IDX[s]], fed[IDX[s]]) for s in REJECTED},
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
    kpis["tb_metal_product_kg"] = led.product_out[IDX["Tb"]] * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
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
