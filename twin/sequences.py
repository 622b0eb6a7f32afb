"""Discrete-event logic of the plant, as SimPy processes (what the PLC sequences do).

- ``carousel``: when the lag column's outlet Dy+Tb reaches the switch limit (C/C0) and a
  regenerated column stands by, the lead goes off line (wash → elute → regenerate → standby),
  the lag becomes lead and the standby column becomes lag.
- ``cell_supervisor``: per cell, each scan: temperature PI on the heater power, salt make-up
  (proportional on the salt Tb content) and the tap of the liquid-alloy cathode when its Tb
  content reaches the tap grade. In *remote* (``plc.<cell>.remote`` ≥ 0.5, tag ``<CELL>.REMOTE``)
  the heater power and the salt feeder are left to whatever was written to them (the actuator
  tags ``<CELL>.HEATER_SP`` / ``<CELL>.SALT_FEED_SP``, e.g. by the MPC); the PI integral tracks the
  heater power meanwhile, so going back to local is bumpless. The tap stays with the supervisor.
- ``distillation_batches``: tapped alloy waits in a transfer crucible; each batch is charged,
  heated, held until the residual alloy metal is below spec, cooled and discharged.
- ``analyser``: sample every period, report ``delay`` later with the sample's time stamp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .adsorption import (
    ROLE_ELUTE,
    ROLE_LAG,
    ROLE_LEAD,
    ROLE_REGENERATE,
    ROLE_STANDBY,
    ROLE_WASH,
    next_roles,
    offline_phases,
)

if TYPE_CHECKING:  # pragma: no cover
    from .plant import TwinPlant

ROLE_NAMES = {ROLE_STANDBY: "standby", ROLE_LEAD: "lead", ROLE_LAG: "lag", ROLE_WASH: "wash",
              ROLE_ELUTE: "elute", ROLE_REGENERATE: "regenerate"}


def _roles(plant: "TwinPlant") -> list[int]:
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    return [int(round(blk.u[blk.input_index[f"role_{k}"]])) for k in range(1, plant.line.n_columns + 1)]


def _set_role(plant: "TwinPlant", k: int, role: int) -> None:
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    blk.set_input(f"role_{k}", float(role))
    blk.refresh(plant.t)


def carousel(plant: "TwinPlant"):
    cfg = plant.config.adsorption
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    plc = plant.flowsheet.blocks["plc"]
    i_bt = blk.output_index["lag_breakthrough"]
    i_limit = plc.input_index["breakthrough_limit"]
    while True:
        yield plant.step_event
        roles = _roles(plant)
        if blk.y[i_bt] < plc.u[i_limit] or ROLE_STANDBY not in roles:
            continue
        breakthrough = blk.y[i_bt]
        new = next_roles(roles)
        for k, (old, role) in enumerate(zip(roles, new), start=1):
            if old != role:
                _set_role(plant, k, role)
        lead = roles.index(ROLE_LEAD) + 1
        plant.log("adsorption", f"carousel switch: col{lead} off line, col{new.index(ROLE_LEAD) + 1} lead, "
                                f"col{new.index(ROLE_LAG) + 1} lag (lag outlet C/C0 {breakthrough:.3f})")
        plant.env.process(_offline(plant, lead, cfg))


def _offline(plant: "TwinPlant", k: int, cfg):
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    for role, seconds in offline_phases(blk.p):
        _set_role(plant, k, role)
        yield plant.after(seconds)
    _set_role(plant, k, ROLE_STANDBY)
    plant.log("adsorption", f"col{k} regenerated, standing by")


def cell_supervisor(plant: "TwinPlant", name: str):
    from .electrolysis import tap

    cell = plant.flowsheet.blocks[name]
    plc = plant.flowsheet.blocks["plc"]
    p = cell.p
    i_T = cell.output_index["temperature"]
    i_salt = cell.output_index["salt_tb_fraction"]
    i_cath = cell.output_index["cathode_tb_fraction"]
    i_sp = plc.input_index[f"{name}.temperature_sp"]
    i_salt_sp = plc.input_index[f"{name}.salt_tb_sp"]
    i_tap = plc.input_index[f"{name}.tap_fraction"]
    i_remote = plc.input_index[f"{name}.remote"]
    pi = plant.line.heater_pi[name]
    integral = pi.bias
    while True:
        yield plant.step_event
        if plc.u[i_remote] >= 0.5:  # remote: heater and feeder as written
            integral = float(np.clip(cell.u[cell.input_index["heater_power"]], 0.0, pi.max_w))
        else:
            err = plc.u[i_sp] - cell.y[i_T]
            integral = float(np.clip(integral + pi.ki * err * plant.dt, 0.0, pi.max_w))
            cell.set_input("heater_power", float(np.clip(pi.kp * err + integral, 0.0, pi.max_w)))
            nominal = cell.y[cell.output_index["deposition_rate"]]
            make_up = nominal * (1.0 + pi.salt_gain * (plc.u[i_salt_sp] - cell.y[i_salt]) / plc.u[i_salt_sp])
            cell.set_input("salt_feed_rate", float(max(make_up, 0.0)))
        if cell.y[i_cath] >= plc.u[i_tap]:
            cell.x, tb_mol, metal_mol = tap(cell.x, p)
            cell.refresh(plant.t)
            plant.line.alloy_waiting.append((tb_mol, metal_mol))
            plant.log(name, f"tapped {tb_mol * 0.158925:.2f} kg Tb in {metal_mol * plant.line.alloy_molar_mass:.1f} kg alloy")


def distillation_batches(plant: "TwinPlant"):
    from .distillation import (
        PHASE_COOL,
        PHASE_HEAT,
        PHASE_HOLD,
        PHASE_IDLE,
        charge,
        discharge,
        phase_complete,
    )

    name = plant.line.distillation
    blk = plant.flowsheet.blocks[name]
    while True:
        while not plant.line.alloy_waiting:
            yield plant.step_event
        tb, metal = plant.line.alloy_waiting.pop(0)
        blk.x = charge(blk.x, tb, metal)
        plant.log(name, "batch charged")
        for phase in (PHASE_HEAT, PHASE_HOLD, PHASE_COOL):
            blk.set_input("phase", float(phase))
            blk.refresh(plant.t)
            started = plant.t
            while not phase_complete(phase, blk.y, blk.p):
                if phase == PHASE_HOLD and plant.t - started > blk.p.max_hold_s:
                    plant.log(name, "hold time-out: residual metal above spec")
                    break
                yield plant.step_event
        blk.x, product_tb, _residual_metal = discharge(blk.x)
        blk.set_input("phase", float(PHASE_IDLE))
        blk.refresh(plant.t)
        plant.ledger.add_product(product_tb)
        plant.log(name, f"batch discharged: {product_tb * 0.158925:.2f} kg Tb metal")


def analyser(plant: "TwinPlant", name: str):
    tag = plant.tags.bound[name].tag
    plant.tags.report_analyser(name, plant.tags.measure(name), plant.t)
    while True:
        yield plant.after(tag.period_s)
        value, t_sample = plant.tags.measure(name), plant.t
        plant.env.process(_report(plant, name, value, t_sample, tag.delay_s))


def _report(plant: "TwinPlant", name: str, value: float, t_sample: float, delay_s: float):
    if delay_s > 0:
        yield plant.after(delay_s)
    plant.tags.report_analyser(name, value, t_sample)
