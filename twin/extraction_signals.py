"""Signals of the extraction cascade (``twin.extraction``): the names of its states, inputs and
outputs, and the REO purity its outputs report.

States per stage k: the mixer's aqueous components (species, H[, SO4]) and organic species, then
each settler cell's (``settler<j>`` when there are several cells); then the cumulative outlets
``cum_raffinate_*``, ``cum_strip_*`` (components and volume), ``cum_raffinate_organic`` (V_e) and,
in an open loop, ``cum_organic_in_<sp>``, ``cum_organic_out_<sp|volume>``.
Purities on an REO (oxide mass) basis: Dy2O3, Tb4O7, Nd2O3, Pr6O11 and the other rare earths'
oxides of ``pilot_config.base.reo_g_per_mol``.
"""

from __future__ import annotations

import numpy as np

from pilot_config.base import RARE_EARTHS, SPECIES, reo_g_per_mol

PHASES = ("mixer.aq", "mixer.org", "settler.aq", "settler.org")
#: g of rare-earth oxide per mol of metal: Ln2O3, CeO2, Pr6O11, Tb4O7 (``reo_g_per_mol``); the
#: product four keep the cascade's calibrated figures (Dy2O3, Tb4O7, Nd2O3, Pr6O11).
REO_G_PER_MOL = {s: reo_g_per_mol(s) for s in RARE_EARTHS} | {
    "Dy": 186.4985, "Tb": 186.9228, "Nd": 168.2405, "Pr": 170.2408}


def reo_purity(n: np.ndarray, species: str, names: tuple[str, ...] = SPECIES) -> float:
    """Share of ``species`` among the rare earths of ``names`` on an oxide-mass basis (0 if none)."""
    ree = [i for i, s in enumerate(names) if s in REO_G_PER_MOL]
    w = np.array([REO_G_PER_MOL[names[i]] * n[i] for i in ree])
    total = float(w.sum())
    return float(w[ree.index(names.index(species))] / total) if total > 1e-30 else 0.0


def signal_names(p, comps: tuple[str, ...], n: int):
    """(stage state names, cumulative state names, input names, output names) of a cascade of
    ``n`` stages with aqueous components ``comps`` and parameters ``p`` (``CascadeParams``)."""
    sp, nn = p.species, p.settler_cells
    stage_names = []
    for k in range(1, n + 1):
        stage_names += [f"stage{k}.mixer.aq.{c}" for c in comps]
        stage_names += [f"stage{k}.mixer.org.{c}" for c in sp]
        for j in range(1, nn + 1):
            cell = "" if nn == 1 else f"{j}"
            stage_names += [f"stage{k}.settler{cell}.aq.{c}" for c in comps]
            stage_names += [f"stage{k}.settler{cell}.org.{c}" for c in sp]
    cum = []
    for outlet in ("raffinate", "strip"):
        cum += [f"cum_{outlet}_{c}" for c in comps] + [f"cum_{outlet}_volume"]
    cum.append("cum_raffinate_organic")  # V_e, m3 of organic entrained
    if p.organic_inlet is not None:
        cum += [f"cum_organic_in_{s}" for s in sp]
        cum += [f"cum_organic_out_{s}" for s in sp] + ["cum_organic_out_volume"]
    inputs = ("feed_flow", *(f"feed_{s}" for s in sp), "feed_H",
              "organic_flow", "scrub_flow", "scrub_H", "strip_flow", "strip_H")
    acids = comps[len(sp):]
    outs = ["raffinate.flow", *(f"raffinate.{s}" for s in sp), *(f"raffinate.{a}" for a in acids),
            "strip.flow", *(f"strip.{s}" for s in sp), *(f"strip.{a}" for a in acids)]
    for k in range(1, n + 1):
        outs += [f"stage{k}.aq.{s}" for s in sp] + [f"stage{k}.org.{s}" for s in sp]
        outs.append(f"stage{k}.pH")
    outs += ["organic_inventory", "tb_purity", "dy_purity", "raffinate.organic"]
    return stage_names, cum, inputs, tuple(outs)
