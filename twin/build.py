"""Build the pilot line's flowsheet from its configuration (the twin's composition root).

Blocks, in flow order: ``plc`` (setpoints) → ``adsorption`` (carousel) → ``eluate_tank`` →
``extraction`` (cascade) → one block per electrolysis cell → ``distillation``. Streams:
carousel ``eluate`` → tank ``in``; tank ``out`` → cascade ``feed``. The cells are fed TbCl3 by
their own make-up feeders and tap alloy to distillation by discrete events (``sequences``).

Species: every unit tracks the config's ``species`` (``PilotLineConfig.species``, default the
shipped eight), in that order; every per-species array of the line (inventories, ledger,
streams) follows it (``Line.species``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pilot_config.base import (
    L_PER_H,
    MOL_PER_L,
    MOLAR_MASS_G_PER_MOL,
    mg_per_L_to_mol_per_m3,
)
from pilot_config.loader import ConfigError, ConfigIssue

from . import adsorption as ads
from . import distillation as dist
from . import electrolysis as elec
from . import extraction as sx
from .flowsheet import Block, Connection, Flowsheet
from .plc import PlcSetpoints
from .sensors import UnknownSignalError, bind_tags
from .tank import Tank, TankParams


@dataclass(frozen=True)
class HeaterPI:
    kp: float  # W/K
    ki: float  # W/(K s)
    bias: float  # W, initial integral (holds the start temperature)
    max_w: float
    salt_gain: float  # relative make-up per relative salt-content error


@dataclass
class Line:
    flowsheet: Flowsheet
    n_columns: int
    n_stages: int
    cells: tuple[str, ...]
    heater_pi: dict[str, HeaterPI]
    alloy_molar_mass: float
    adsorption: str = "adsorption"
    tank: str = "eluate_tank"
    extraction: str = "extraction"
    distillation: str = "distillation"
    #: (block, outlet) pairs through which material leaves the line
    exits: tuple[tuple[str, str], ...] = (
        ("adsorption", "raffinate"), ("adsorption", "wash"), ("adsorption", "regen"),
        ("extraction", "raffinate"), ("extraction", "strip"))
    alloy_waiting: list[tuple[float, float]] = field(default_factory=list)

    @property
    def species(self) -> tuple[str, ...]:
        """The elements the line tracks, in the order of every per-species array (config ``species``)."""
        return self.flowsheet.species

    def alloy_in_transit(self) -> np.ndarray:
        inv = np.zeros(len(self.species))
        inv[self.species.index("Tb")] = sum(tb for tb, _ in self.alloy_waiting)
        return inv

    def cell_totals(self, cell: Block) -> tuple[float, float, float]:
        """(Tb deposited mol, charge C, electrical energy J) since the start."""
        i = cell.state_index
        return cell.x[i["cum_deposited_Tb"]], cell.x[i["cum_charge"]], cell.x[i["cum_energy"]]


def _conc(mg_per_L: dict[str, float], species: tuple[str, ...]) -> np.ndarray:
    """mol/m3 of each of ``species`` (the line's order) from a config map in mg/L."""
    return np.array([mg_per_L_to_mol_per_m3(s, mg_per_L[s]) for s in species])


def _plc_block(config) -> Block:
    names = ["breakthrough_limit"]
    values = [config.adsorption.breakthrough_limit_fraction]
    for cell in config.electrolysis.cells:
        c = elec.params_from_config(cell)
        unit = elec.ElectrolysisCell(cell.name, config.species)
        x0, u0 = unit.initial_state(c), unit.nominal_inputs(c, cell.current_setpoint_A)
        salt_w0 = elec.cell_terms(x0, u0, c).w_salt
        names += [f"{cell.name}.temperature_sp", f"{cell.name}.salt_tb_sp", f"{cell.name}.tap_fraction",
                  f"{cell.name}.remote"]
        values += [c.t0, salt_w0, c.tap_fraction, 0.0]  # remote 0: the cell supervisor sets heater and feeder
    plc = PlcSetpoints(tuple(names))
    return Block("plc", plc, None, np.zeros(0), u=np.array(values, dtype=float))


def _adsorption_block(config, start: str) -> Block:
    """``design``: the lead column saturated with feed, the lag fresh (mid-cycle carousel);
    ``cold``: every column fresh."""
    p = ads.params_from_config(config.adsorption, config.species)
    unit = ads.AdsorptionCarousel("adsorption", p, config.species)
    feed = config.feed
    c_feed, h_feed = _conc(feed.composition_mg_per_L, config.species), feed.acidity_mol_per_L * MOL_PER_L
    u = unit.design_inputs(p, feed.flow_L_per_h * L_PER_H, c_feed, h_feed)
    x = (unit.initial_state(p, "lead_saturated", c_feed, h_feed) if start == "design"
         else unit.initial_state(p))
    # The carousel's own Rosenbrock solver conserves mass exactly by construction (balances
    # close to ~1e-14 whatever the tolerance); 1e-4 keeps switch times and outlet totals within
    # 6e-5 of a 1e-7 run at a tenth of the cost.
    return Block("adsorption", unit, p, x, u=u, rtol=1e-4, atol=1e-8)


def _tank_block(config) -> Block:
    cfg = config.eluate_tank
    tank = Tank("eluate_tank", config.species)
    sp = cfg.acidity_setpoint_mol_per_L
    p = TankParams(cfg.capacity_L / 1000.0, cfg.low_volume_L / 1000.0,
                   None if sp is None else sp * MOL_PER_L)
    conc = np.append(_conc(cfg.initial_composition_mg_per_L, config.species),
                     cfg.initial_acidity_mol_per_L * MOL_PER_L)
    blk = Block("eluate_tank", tank, p, tank.initial_state(cfg.initial_volume_L / 1000.0, conc))
    blk.set_input("out_flow", cfg.cascade_feed_L_per_h * L_PER_H)
    blk.refresh()
    return blk


def _cascade_block(config, start: str) -> Block:
    p = sx.params_from_config(config.extraction, species=config.species)
    unit = sx.Cascade("extraction", p)
    tank = config.eluate_tank
    u = unit.design_inputs(p, _conc(tank.initial_composition_mg_per_L, config.species),
                           tank.initial_acidity_mol_per_L * MOL_PER_L)
    u[unit.input_index["feed_flow"]] = tank.cascade_feed_L_per_h * L_PER_H
    x = unit.steady_state(u, p) if start == "design" else unit.initial_state(p)
    return Block("extraction", unit, p, x, u=u)


def _cell_blocks(config) -> tuple[list[Block], dict[str, HeaterPI]]:
    blocks, pis = [], {}
    for cfg in config.electrolysis.cells:
        unit = elec.ElectrolysisCell(cfg.name, config.species)
        p = elec.params_from_config(cfg)
        blk = Block(cfg.name, unit, p, unit.initial_state(p), u=unit.nominal_inputs(p, cfg.current_setpoint_A))
        loss = p.ua * (p.t0 - p.t_amb)
        blk.set_input("heater_power", loss)
        blk.refresh()
        tau = p.heat_capacity / p.ua
        kp = 4.0 * p.heat_capacity / tau  # W/K: closes the thermal loop ~4x faster than open loop
        pis[cfg.name] = HeaterPI(kp=kp, ki=kp / 1800.0, bias=loss, max_w=p.heater_max, salt_gain=2.0)
        blocks.append(blk)
    return blocks, pis


def _distillation_block(config) -> Block:
    unit = dist.VacuumDistillation("distillation", config.species)
    p = dist.params_from_config(config.distillation)
    return Block("distillation", unit, p, unit.initial_state(p))


def build_line(config, start: str = "design") -> Line:
    cells, pis = _cell_blocks(config)
    blocks = [_plc_block(config), _adsorption_block(config, start), _tank_block(config),
              _cascade_block(config, start), *cells, _distillation_block(config)]
    connections = [Connection("adsorption", "eluate", "eluate_tank", "in"),
                   Connection("eluate_tank", "out", "extraction", "feed")]
    fs = Flowsheet(blocks, connections, species=config.species)
    metal = config.distillation.metal
    return Line(flowsheet=fs, n_columns=config.adsorption.n_columns,
                n_stages=blocks[3].p.n_stages, cells=tuple(c.name for c in cells), heater_pi=pis,
                alloy_molar_mass=MOLAR_MASS_G_PER_MOL[metal] / 1000.0)


def check_signals(config, file: str) -> None:
    """Cross-reference check of the tags against the twin's signals (for ``config check``)."""
    line = build_line(config, start="cold")
    try:
        bind_tags(config.tags, line.flowsheet)
    except UnknownSignalError as exc:
        raise ConfigError([ConfigIssue(file, "tags", None, "", p) for p in exc.problems]) from None
