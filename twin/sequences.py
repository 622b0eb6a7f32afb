"""Discrete-event logic of the plant, as SimPy processes (what the PLC sequences do).

A PLC acts only on what it measures: every decision below reads an instrument bound in the
config (``sequences`` in pilot_config: a sensor or analyser tag) through ``TagLayer.reading``,
the same reported sample a client sees (noise, scan or sampling period, reporting delay,
quality, signal faults), and compares it with the PLC's own setpoints (``plc.*``). A reading
whose sample was taken before the sequence's last action (a switch, a tap, a phase change) is
stale for that decision and is not acted on; a BAD reading holds the decision.

- ``carousel``: when the lag-outlet instrument reports Dy+Tb C/C0 at or above the switch limit
  and a regenerated column stands by, the lead goes off line (wash → elute → regenerate →
  standby), the lag becomes lead and the standby column becomes lag. With an analyser of period
  P and delay D the switch comes D (plus at most P, plus one scan) after the true lag outlet
  crosses the limit, so the lag lets through what passes during that time.
- ``cell_supervisor``: per cell, each scan: temperature PI on the heater power (measured melt
  temperature), salt make-up ``ṅ = ṅ_ff·(1 + g·(w_sp − w_meas)/w_sp)`` with the PLC-computed
  feed-forward ``ṅ_ff = I_meas·η_ff/(3F)`` (Faraday on the measured current at the declared
  efficiency), and the tap of the liquid-alloy cathode when the cathode analyser reports the tap
  grade. In *remote* (``plc.<cell>.remote`` ≥ 0.5, tag ``<CELL>.REMOTE``) the heater power and
  the salt feeder are left to whatever was written to them (the actuator tags
  ``<CELL>.HEATER_SP`` / ``<CELL>.SALT_FEED_SP``, e.g. by the MPC); the PI integral tracks the
  heater power meanwhile, so going back to local is bumpless. The tap stays with the supervisor.
- ``distillation_batches``: tapped alloy waits in a transfer crucible; each batch is charged,
  heated (until the measured temperature is within 2 K of the hold), held until the measured
  residual alloy metal is below spec, cooled and discharged.
- ``analyser``: sample every period, report ``delay`` later with the sample's time stamp.
"""

from __future__ import annotations

import math

import numpy as np

from pilot_config.base import FARADAY_C_PER_MOL

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
from .distillation import (
    PHASE_COOL,
    PHASE_HEAT,
    PHASE_HOLD,
    PHASE_IDLE,
    charge,
    discharge,
    phase_complete,
)
from .electrolysis import tap
from .sensors import Reading
from .sequence_host import SequenceHost

ROLE_NAMES = {ROLE_STANDBY: "standby", ROLE_LEAD: "lead", ROLE_LAG: "lag", ROLE_WASH: "wash",
              ROLE_ELUTE: "elute", ROLE_REGENERATE: "regenerate"}
N_E = 3.0  # electrons per Tb


def _roles(plant: SequenceHost) -> list[int]:
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    return [int(round(blk.u[blk.input_index[f"role_{k}"]])) for k in range(1, plant.line.n_columns + 1)]


def _set_role(plant: SequenceHost, k: int, role: int) -> None:
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    blk.set_input(f"role_{k}", float(role))
    blk.refresh(plant.t)


def _fresh(r: Reading | None, since: float) -> bool:
    """A reading sampled after ``since`` (plant s)."""
    return r is not None and r.sample_t > since


def _shown(r: Reading) -> str:
    return f"{r.eng:.3g} {r.unit}"


def carousel(plant: SequenceHost):
    cfg = plant.config.adsorption
    plc = plant.flowsheet.blocks["plc"]
    tag = plant.config.sequences.carousel.lag_breakthrough
    i_limit = plc.input_index["breakthrough_limit"]
    last_switch = -math.inf
    while True:
        yield plant.step_event
        r = plant.tags.reading(tag)
        if not _fresh(r, last_switch) or r.si < plc.u[i_limit]:
            continue
        roles = _roles(plant)
        if ROLE_STANDBY not in roles:
            continue
        new = next_roles(roles)
        for k, (old, role) in enumerate(zip(roles, new), start=1):
            if old != role:
                _set_role(plant, k, role)
        last_switch = plant.t
        lead = roles.index(ROLE_LEAD) + 1
        plant.log("adsorption", f"carousel switch: col{lead} off line, col{new.index(ROLE_LEAD) + 1} lead, "
                                f"col{new.index(ROLE_LAG) + 1} lag (lag outlet C/C0 {_shown(r)} on {tag}, "
                                f"sampled {(plant.t - r.sample_t) / 60.0:.0f} min before)")
        plant.env.process(_offline(plant, lead, cfg))


def _offline(plant: SequenceHost, k: int, cfg):
    blk = plant.flowsheet.blocks[plant.line.adsorption]
    for role, seconds in offline_phases(blk.p):
        _set_role(plant, k, role)
        yield plant.after(seconds)
    _set_role(plant, k, ROLE_STANDBY)
    plant.log("adsorption", f"col{k} regenerated, standing by")


def _local_control(plant: SequenceHost, name: str, integral: float) -> float:
    """Heater PI and salt make-up on the measured values; returns the new PI integral. A BAD
    instrument holds its output where it is."""
    cell, plc = plant.flowsheet.blocks[name], plant.flowsheet.blocks["plc"]
    ins, pi, tags = plant.config.sequences.cell(name), plant.line.heater_pi[name], plant.tags
    temp = tags.reading(ins.temperature)
    if temp is not None:
        err = plc.u[plc.input_index[f"{name}.temperature_sp"]] - temp.si
        integral = float(np.clip(integral + pi.ki * err * plant.step_s, 0.0, pi.max_w))
        cell.set_input("heater_power", float(np.clip(pi.kp * err + integral, 0.0, pi.max_w)))
    current, salt = tags.reading(ins.current), tags.reading(ins.salt_tb)
    if current is not None and salt is not None:
        feed_forward = max(current.si, 0.0) * ins.feed_forward_efficiency / (N_E * FARADAY_C_PER_MOL)
        w_sp = plc.u[plc.input_index[f"{name}.salt_tb_sp"]]
        make_up = feed_forward * (1.0 + pi.salt_gain * (w_sp - salt.si) / w_sp)
        cell.set_input("salt_feed_rate", float(max(make_up, 0.0)))
    return integral


def cell_supervisor(plant: SequenceHost, name: str):
    cell = plant.flowsheet.blocks[name]
    plc = plant.flowsheet.blocks["plc"]
    ins = plant.config.sequences.cell(name)
    i_tap = plc.input_index[f"{name}.tap_fraction"]
    i_remote = plc.input_index[f"{name}.remote"]
    pi = plant.line.heater_pi[name]
    integral, last_tap = pi.bias, -math.inf
    while True:
        yield plant.step_event
        if plc.u[i_remote] >= 0.5:  # remote: heater and feeder as written
            integral = float(np.clip(cell.u[cell.input_index["heater_power"]], 0.0, pi.max_w))
        else:
            integral = _local_control(plant, name, integral)
        grade = plant.tags.reading(ins.cathode_tb)
        if _fresh(grade, last_tap) and grade.si >= plc.u[i_tap]:
            cell.x, tb_mol, metal_mol = tap(cell.x, cell.p)
            cell.refresh(plant.t)
            last_tap = plant.t
            plant.line.alloy_waiting.append((tb_mol, metal_mol))
            plant.log(name, f"tapped {tb_mol * 0.158925:.2f} kg Tb in {metal_mol * plant.line.alloy_molar_mass:.1f} kg "
                            f"alloy (cathode grade {_shown(grade)} on {ins.cathode_tb})")


def _phase_done(plant: SequenceHost, phase: int, started: float, p) -> bool:
    """The phase's end condition on the measured (temperature, residual metal), from scans
    taken after the phase began."""
    ins = plant.config.sequences.distillation
    temp, residual = plant.tags.reading(ins.temperature), plant.tags.reading(ins.residual_metal)
    if not (_fresh(temp, started) and _fresh(residual, started)):
        return False
    return phase_complete(phase, np.array([temp.si, residual.si]), p)  # (the block's output order)


def distillation_batches(plant: SequenceHost):
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
            while not _phase_done(plant, phase, started, blk.p):
                if phase == PHASE_HOLD and plant.t - started > blk.p.max_hold_s:
                    plant.log(name, "hold time-out: residual metal above spec")
                    break
                yield plant.step_event
        blk.x, product_tb, _residual_metal = discharge(blk.x)
        blk.set_input("phase", float(PHASE_IDLE))
        blk.refresh(plant.t)
        plant.ledger.add_product(product_tb)
        plant.log(name, f"batch discharged: {product_tb * 0.158925:.2f} kg Tb metal")


def analyser(plant: SequenceHost, name: str):
    tag = plant.tags.bound[name].tag
    plant.tags.report_analyser(name, plant.tags.measure(name), plant.t)
    while True:
        yield plant.after(tag.period_s)
        value, t_sample = plant.tags.measure(name), plant.t
        plant.env.process(_report(plant, name, value, t_sample, tag.delay_s))


def _report(plant: SequenceHost, name: str, value: float, t_sample: float, delay_s: float):
    if delay_s > 0:
        yield plant.after(delay_s)
    plant.tags.report_analyser(name, value, t_sample)
