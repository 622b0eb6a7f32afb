"""Element accounting over a run: what came in, what left, what is held.

For each element e (mol):

    in_e  = ∫ Q_feed c_feed,e dt + upset_e
    out_e = carousel raffinate + wash + regenerant, cascade raffinate (with the organic entrained
            into it) + strip liquor, salt-preparation losses, distilled metal product
    held_e = units + alloy waiting for distillation + salt-preparation hold-up + TbCl3 store
    error_e = (in_e − out_e − (held_e(t) − held_e(0))) / in_e

Terbium has one route: the Tb of the cascade's Tb product (its raffinate) goes to salt
preparation (``twin.salt_prep``), not out of the line; the cells draw their make-up from the
TbCl3 store, an internal transfer. The store's initial stock is an inventory at t = 0 (a stated
source, ``sources()``), so the error is normalised by the leach feed alone and a loss of the
cascade's Tb is not hidden behind the stock.

``upset_e``: material a malfunction lets into a unit past its feed meter (a feed swing upstream of
the cascade: the unit sees its inputs scaled by s, ``input_scale``; negative when held back):

    upset_e = Σ_steps (s_Q s_e − 1) Q c_e dt     over every stream into a unit with scaled inputs

Inputs are held over each synchronisation step, so the inflow integral is exact; outflows are
the units' own ``cum_<outlet>_<species>`` states. ``error_e`` is therefore the integration error
of the whole line, which must stay far below the 0.1 % the tests demand.
"""

from __future__ import annotations

import numpy as np


class Ledger:
    """The balance of every element of the line's ``species`` (arrays in that order)."""

    def __init__(self, line, salt=None):
        self.line, self.salt = line, salt
        self.species = species = line.species
        self._tb = species.index("Tb")
        fs = line.flowsheet
        ads = fs.blocks[line.adsorption]
        self._feed_flow = ads.input_index["feed_flow"]
        self._feed_conc = np.array([ads.input_index[f"feed_{s}"] for s in species])
        self.feed_in = np.zeros(len(species))
        self.salt_in = np.zeros(len(species))
        self.upset_in = np.zeros(len(species))
        self.product_out = np.zeros(len(species))
        self.held0 = self.held()
        self.out0 = self.unit_outflows()

    def before_step(self, dt: float) -> None:
        """Book the inflows of the coming step (inputs are held over it)."""
        u = self.line.flowsheet.blocks[self.line.adsorption].u
        self.feed_in += u[self._feed_flow] * u[self._feed_conc] * dt
        if self.salt is None:  # no salt route: the make-up is a source
            for name in self.line.cells:
                cell = self.line.flowsheet.blocks[name]
                self.salt_in[self._tb] += cell.u[cell.input_index["salt_feed_rate"]] * dt

    def after_step(self, dt: float) -> None:
        """Book what entered units with scaled inputs over the step just taken (``upset_in``)."""
        fs = self.line.flowsheet
        for c in fs.connections:
            block = fs.blocks[c.dst]
            scale = getattr(block.unit, "input_scale", None)
            if scale is None:
                continue
            ii, u = block.input_index, block.u
            q = ii[f"{c.prefix}_flow"]
            for k, sp in enumerate(self.species):
                i = ii.get(f"{c.prefix}_{sp}")
                if i is not None:
                    self.upset_in[k] += (scale[q] * scale[i] - 1.0) * u[q] * u[i] * dt

    def add_salt(self, tb_mol: float) -> None:
        self.salt_in[self._tb] += tb_mol

    def add_product(self, tb_mol: float) -> None:
        self.product_out[self._tb] += tb_mol

    def held(self) -> np.ndarray:
        return self.line.flowsheet.inventory() + self.line.alloy_in_transit() + self.salt_held()

    def salt_held(self) -> np.ndarray:
        """Salt-preparation hold-up and TbCl3 store (mol)."""
        held = np.zeros(len(self.species))
        if self.salt is not None:
            held[self._tb] = self.salt.holdup + self.salt.store
        return held

    def stream(self, block: str, outlet: str) -> np.ndarray:
        """mol of each species that left ``block`` through ``outlet`` since t = 0."""
        cum = self.line.flowsheet.blocks[block].cumulative(outlet, self.species)
        return cum[1 : 1 + len(self.species)]

    def unit_outflows(self) -> np.ndarray:
        total = np.zeros(len(self.species))
        for block, outlet in self.line.exits:
            total += self.stream(block, outlet)
        if self.salt is not None:  # the Tb product goes to salt preparation; its losses leave
            total[self._tb] += self.salt.lost - self.stream(self.line.extraction, "raffinate")[self._tb]
        return total

    def sources(self) -> dict[str, float]:
        """Where the line's Tb came from (mol): the leach feed, upsets, the salt additions booked
        as sources, and the stated initial inventories of the salt route."""
        tb = self._tb
        out = {"leach_feed": float(self.feed_in[tb]), "upset": float(self.upset_in[tb]),
               "salt_added": float(self.salt_in[tb])}
        if self.salt is not None:
            out |= {"initial_store_stock": self.salt.p.stock0, "initial_salt_prep_holdup": self.salt.p.holdup0}
        return out

    def totals(self) -> dict[str, np.ndarray]:
        return {
            "in": self.feed_in + self.salt_in + self.upset_in,
            "out": self.unit_outflows() - self.out0 + self.product_out,
            "held_change": self.held() - self.held0,
        }

    def balance_error(self) -> dict[str, float]:
        t = self.totals()
        err = (t["in"] - t["out"] - t["held_change"]) / np.maximum(t["in"], 1e-30)
        return {sp: float(e) for sp, e in zip(self.species, err)}
