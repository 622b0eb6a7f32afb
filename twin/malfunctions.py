"""Malfunctions for operator training: process and signal faults ramped in and out on the plant clock.

A ``Malfunction`` is data (what a scenario file or an instructor gives); ``inject(plant, m)`` starts a
SimPy process on the plant that computes the fault level ℓ(t) ∈ [0, 1] after every physics step and
applies it to the step that follows (so a fault acts on the synchronisation grid, like every input):

    ℓ(t) = clip((t − onset)/ramp, 0, 1)                        while t < onset + duration
    ℓ(t) = 1 − clip((t − onset − duration)/ramp, 0, 1)          after   (no duration: stays at 1)

``ramp_s = 0`` is a step. ``severity`` s means, per kind (target in brackets):

| kind | target | effect at level ℓ | operator sees |
|---|---|---|---|
| ``feed_swing`` | ``cascade`` (eluate into the SX) or ``leach`` (carousel feed) | Dy/Tb ratio × (1 + sℓ): Dy × √(1+sℓ), Tb ÷ √(1+sℓ) | SX.RAFF.Dy up, SX.TB_PURITY down |
| ``extractant_degradation`` | ``extraction`` | f_HA × (1 − sℓ) (``CascadeParams.extractant_factor``) | Tb purity falls slowly |
| ``crud_entrainment`` | ``extraction`` | k·a × (1 − sℓ), settler interface free of crud f_clear × (1 − sℓ): organic entrained into the raffinate at φ_crud(1 − f_clear) of its flow, with its metal (``twin.extraction``) | SX.RAFF.ORG (ppm) up, organic inventory falls, purity falls |
| ``adsorbent_fouling`` | ``col<k>`` | capacity × (1 − sℓ), ΔP × (1 + 24sℓ) | ADS.COL<k>.DP high, earlier breakthrough |
| ``anode_effect`` | cell name | critical anode current density × (1 − sℓ) | CELL.ANODE_EFFECT, voltage high |
| ``heater_failure`` | cell name | heater power available × (1 − sℓ) | heater power low, melt temperature falls; long and severe: the Zn cathode freezes (419.5 °C, CE → 0), then the melt (arrest at the liquidus), CELL.V_LIMIT and the current collapses; thaws when the heater is back |
| ``electrolyte_contamination`` | cell name | current efficiency ceiling η_max × (1 − sℓ) | salt make-up (deposition) falls |
| ``pump_trip`` | a writable pump tag (``SX.ORG.FLOW_SP``) | the pump's flow × (1 − sℓ), writes to it refused while tripped | flow to zero |
| ``frozen_value`` | tag | the reading stops at its value at onset (quality stays GOOD) | a flat line; ``<TAG>.STUCK`` where configured |
| ``drift`` | tag | reading + s·ℓ (tag units: s is the full drift) | a slow offset |
| ``noise_burst`` | tag | reading + N(0, (sℓ)²) (tag units) | a noisy trace |
| ``bad_status`` | tag | quality BAD | <TAG>.BADPV |
| ``analyser_outage`` | analyser tag | no new results: the last one, stale, quality BAD | <TAG>.BADPV |

Cost: nothing is hooked into the plant until a malfunction is injected (the tag layer checks two
empty dicts per snapshot/write). Parameter faults replace a block's frozen parameter dataclass
(``dataclasses.replace``) from the baseline, so several faults on one block compose by product.
A feed swing on the cascade scales the feed inputs the cascade sees (a wrapped unit): material
entering (or held back) upstream of the cascade, outside the feed meter, which the ledger books as a
source of its own (``Ledger.upset_in``). Every fault keeps the line's element balance closed
(tests/test_malfunction_balance.py).
Noise draws come from a generator seeded by (plant seed, injection number): a replayed session
draws the same noise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from pilot_config.base import StrictModel

from .signals import Quality, Sample

if TYPE_CHECKING:  # pragma: no cover
    from .plant import TwinPlant

log = logging.getLogger(__name__)

PROCESS_KINDS = ("feed_swing", "extractant_degradation", "crud_entrainment", "adsorbent_fouling",
                 "anode_effect", "heater_failure", "electrolyte_contamination", "pump_trip")
SIGNAL_KINDS = ("frozen_value", "drift", "noise_burst", "bad_status", "analyser_outage")
Kind = Literal["feed_swing", "extractant_degradation", "crud_entrainment", "adsorbent_fouling",
               "anode_effect", "heater_failure", "electrolyte_contamination", "pump_trip",
               "frozen_value", "drift", "noise_burst", "bad_status", "analyser_outage"]
_FRACTION_KINDS = ("extractant_degradation", "crud_entrainment", "adsorbent_fouling", "anode_effect",
                   "heater_failure", "electrolyte_contamination", "pump_trip")


class Malfunction(StrictModel):
    """One fault: kind, where, when (plant seconds since the session start), how fast, how bad."""

    kind: Kind
    target: str = Field(min_length=1, max_length=64, description="tag, cell, col<k>, extraction, cascade, leach")
    onset_s: float = Field(0.0, ge=0, le=1e8, description="plant time the fault starts ramping in")
    ramp_s: float = Field(0.0, ge=0, le=1e7, description="time to full severity (and back out)")
    severity: float = Field(1.0, ge=-1e6, le=1e6, description="see the table in twin.malfunctions")
    duration_s: float | None = Field(None, gt=0, le=1e8, description="from onset to the start of the ramp out")

    @model_validator(mode="after")
    def _severity(self) -> Malfunction:
        if self.kind in _FRACTION_KINDS and not 0 < self.severity <= 1:
            raise ValueError(f"{self.kind}: severity is a fraction lost, 0 < s <= 1; got {self.severity}")
        if self.kind == "feed_swing" and not -0.9 <= self.severity <= 5:
            raise ValueError(f"feed_swing: severity is the relative Dy/Tb change, -0.9..5; got {self.severity}")
        if self.kind == "noise_burst" and self.severity <= 0:
            raise ValueError("noise_burst: severity is a standard deviation (tag units), > 0")
        return self

    def level(self, t: float) -> float:
        """ℓ(t) ∈ [0, 1]."""
        tau = t - self.onset_s
        if tau < 0:
            return 0.0
        ramp_in = 1.0 if self.ramp_s <= 0 else min(tau / self.ramp_s, 1.0)
        if self.duration_s is None or tau < self.duration_s:
            return ramp_in
        out = tau - self.duration_s
        return 0.0 if self.ramp_s <= 0 else max(1.0 - out / self.ramp_s, 0.0)

    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.onset_s + self.duration_s + self.ramp_s


class _ScaledInputs:
    """A unit that sees some of its inputs scaled (a disturbance upstream of its meters)."""

    def __init__(self, inner, scale: np.ndarray):
        self.inner, self.input_scale = inner, scale
        if hasattr(inner, "jacobian"):
            self.jacobian = lambda t, x, u, p: inner.jacobian(t, x, u * self.input_scale, p)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def derivatives(self, t, x, u, p):
        return self.inner.derivatives(t, x, u * self.input_scale, p)

    def outputs(self, t, x, u, p):
        return self.inner.outputs(t, x, u * self.input_scale, p)


@dataclasses.dataclass
class SignalFault:
    """What the tag layer applies to one tag's sample in ``snapshot``."""

    kind: str
    offset: float = 0.0
    frozen: Sample | None = None

    def apply(self, s: Sample) -> Sample:
        f = self.frozen or s
        if self.kind == "frozen_value":  # stuck transmitter: fresh time stamps, the same value
            return Sample(f.value, s.source_time, s.quality)
        if self.kind == "analyser_outage":  # no new results: the last one, stale and BAD
            return Sample(f.value, f.source_time, Quality.BAD)
        if self.kind == "bad_status":
            return Sample(s.value, s.source_time, Quality.BAD)
        return Sample(s.value + self.offset, s.source_time, s.quality)


class FaultBook:
    """Per-plant registry: baseline parameters and units, the factors each active fault applies."""

    def __init__(self, plant: TwinPlant):
        self.plant = plant
        self.count = 0
        self.base_p: dict[str, object] = {}
        self.base_unit: dict[str, object] = {}
        self.p_factors: dict[tuple[str, str, int | None], dict[int, float]] = {}
        self.u_factors: dict[tuple[str, int], dict[int, float]] = {}
        self.active: dict[int, Malfunction] = {}

    def set_param(self, fid: int, block: str, field: str, index: int | None, factor: float) -> None:
        blk = self.plant.flowsheet.blocks[block]
        base = self.base_p.setdefault(block, blk.p)
        self.p_factors.setdefault((block, field, index), {})[fid] = factor
        changes: dict[str, object] = {}
        for (b, f, i), facs in self.p_factors.items():
            if b != block:
                continue
            total = math.prod(facs.values())
            value = getattr(base, f)
            if i is None:
                changes[f] = value * total
            else:
                arr = np.array(changes.get(f, value), dtype=float, copy=True)
                arr[i] = np.asarray(value)[i] * total
                changes[f] = arr
        identity = all(all(v == 1.0 for v in facs.values())
                       for (b, _, _), facs in self.p_factors.items() if b == block)
        blk.p = base if identity else dataclasses.replace(base, **changes)
        blk.refresh(self.plant.t)

    def scale_input(self, fid: int, block: str, name: str, factor: float) -> None:
        blk = self.plant.flowsheet.blocks[block]
        base = self.base_unit.setdefault(block, blk.unit)
        self.u_factors.setdefault((block, blk.input_index[name]), {})[fid] = factor
        scale = np.ones(len(blk.u))
        for (b, i), facs in self.u_factors.items():
            if b == block:
                scale[i] *= math.prod(facs.values())
        blk.unit = base if np.all(scale == 1.0) else _ScaledInputs(base, scale)
        blk.refresh(self.plant.t)


def book(plant: TwinPlant) -> FaultBook:
    fb = getattr(plant, "faults", None)
    if fb is None:
        fb = plant.faults = FaultBook(plant)
    return fb


def _feed_swing(plant: TwinPlant, m: Malfunction, fid: int):
    fb, s = book(plant), m.severity

    def ratio(level):
        r = math.sqrt(1.0 + s * level)
        return r, 1.0 / r

    if m.target == "cascade":
        def apply(level):
            dy, tb = ratio(level)
            fb.scale_input(fid, plant.line.extraction, "feed_Dy", dy)
            fb.scale_input(fid, plant.line.extraction, "feed_Tb", tb)
        return apply
    if m.target == "leach":
        blk = plant.flowsheet.blocks[plant.line.adsorption]
        i_dy, i_tb = blk.input_index["feed_Dy"], blk.input_index["feed_Tb"]
        dy0, tb0 = blk.u[i_dy], blk.u[i_tb]

        def apply_leach(level):
            dy, tb = ratio(level)
            blk.u[i_dy], blk.u[i_tb] = dy0 * dy, tb0 * tb
        return apply_leach
    raise ValueError(f"feed_swing: target is 'cascade' or 'leach'; got {m.target!r}")


def _cascade_fault(plant: TwinPlant, m: Malfunction, fid: int):
    fb, s = book(plant), m.severity
    if m.target != plant.line.extraction:
        raise ValueError(f"{m.kind}: target must be {plant.line.extraction!r}; got {m.target!r}")
    if m.kind == "extractant_degradation":
        return lambda level: fb.set_param(fid, m.target, "extractant_factor", None, 1.0 - s * level)

    def crud(level):
        fb.set_param(fid, m.target, "mass_transfer", None, 1.0 - s * level)
        fb.set_param(fid, m.target, "interface_clear", None, 1.0 - s * level)
    return crud


def _fouling(plant: TwinPlant, m: Malfunction, fid: int):
    fb, s, n = book(plant), m.severity, plant.line.n_columns
    if not (m.target.startswith("col") and m.target[3:].isdigit() and 1 <= int(m.target[3:]) <= n):
        raise ValueError(f"adsorbent_fouling: target is col1..col{n}; got {m.target!r}")
    k = int(m.target[3:]) - 1

    def foul(level):
        fb.set_param(fid, plant.line.adsorption, "capacity_factor", k, 1.0 - s * level)
        fb.set_param(fid, plant.line.adsorption, "dp_factor", k, 1.0 + 24.0 * s * level)
    return foul


_CELL_FIELD = {"anode_effect": "i_crit", "heater_failure": "heater_max", "electrolyte_contamination": "eta_max"}


def _cell_fault(plant: TwinPlant, m: Malfunction, fid: int):
    if m.target not in plant.line.cells:
        raise ValueError(f"{m.kind}: target must be a cell {list(plant.line.cells)}; got {m.target!r}")
    fb, field = book(plant), _CELL_FIELD[m.kind]
    return lambda level: fb.set_param(fid, m.target, field, None, 1.0 - m.severity * level)


def _applier(plant: TwinPlant, m: Malfunction, fid: int):
    """The function ℓ -> None that puts this fault on the plant at level ℓ (validates the target)."""
    if m.kind == "feed_swing":
        return _feed_swing(plant, m, fid)
    if m.kind in ("extractant_degradation", "crud_entrainment"):
        return _cascade_fault(plant, m, fid)
    if m.kind == "adsorbent_fouling":
        return _fouling(plant, m, fid)
    if m.kind in _CELL_FIELD:
        return _cell_fault(plant, m, fid)
    if m.kind == "pump_trip":
        return _pump_trip(plant, m)
    return _signal_fault(plant, m, fid)


def _pump_trip(plant: TwinPlant, m: Malfunction):
    b = plant.tags.bound.get(m.target)
    if b is None or not b.tag.writable or b.kind != "u":
        raise ValueError(f"pump_trip: target must be a writable pump/flow tag; got {m.target!r}")
    held = {"value": None}

    def apply(level):
        if held["value"] is None:
            held["value"] = float(b.block.u[b.index])
        if level > 0:
            plant.tags.locked[m.target] = "pump tripped"
            b.block.u[b.index] = held["value"] * (1.0 - m.severity * level)
        else:
            plant.tags.locked.pop(m.target, None)
            b.block.u[b.index] = held["value"]  # reset: back to the setpoint it had
        b.block.refresh(plant.t)
    return apply


def _signal_fault(plant: TwinPlant, m: Malfunction, fid: int):
    b = plant.tags.bound.get(m.target)
    if b is None:
        raise ValueError(f"{m.kind}: unknown tag {m.target!r}")
    if m.kind == "analyser_outage" and b.tag.kind != "analyser":
        raise ValueError(f"analyser_outage: {m.target} is a {b.tag.kind}, not an analyser")
    tags = plant.tags
    fault = SignalFault(m.kind)
    rng = np.random.default_rng([plant.seed, fid])

    def apply(level):
        if level <= 0:
            tags.signal_faults.pop(m.target, None)
            return
        if m.target not in tags.signal_faults and m.kind in ("frozen_value", "analyser_outage"):
            fault.frozen = tags.sample(m.target)
        if m.kind == "drift":
            fault.offset = m.severity * level
        elif m.kind == "noise_burst":
            fault.offset = float(rng.normal(0.0, m.severity * level))
        tags.signal_faults[m.target] = fault
    return apply


def inject(plant: TwinPlant, m: Malfunction) -> int:
    """Schedule ``m`` on ``plant`` (onset in the past: starts now); returns the fault's id."""
    fb = book(plant)
    fb.count += 1
    fid = fb.count
    apply = _applier(plant, m, fid)  # validates the target before anything is scheduled
    plant.env.process(_run(plant, m, fid, apply))
    return fid


def _run(plant: TwinPlant, m: Malfunction, fid: int, apply):
    fb = book(plant)
    if m.onset_s > plant.t:
        yield plant.after(m.onset_s - plant.t)
    fb.active[fid] = m
    plant.log("training", f"malfunction {m.kind} on {m.target} (severity {m.severity:g})")
    every_step = m.kind == "noise_burst"
    level = -1.0
    while True:
        t = plant.t
        new = m.level(t)
        if new != level or every_step:
            apply(new)
            level = new
        if t >= m.end_s():
            break
        out_start = math.inf if m.duration_s is None else m.onset_s + m.duration_s
        ramping = m.ramp_s > 0 and (t < m.onset_s + m.ramp_s or t >= out_start)
        if every_step or ramping:
            yield plant.step_event
        elif out_start == math.inf:
            return  # at full severity for good
        else:  # flat until the ramp out starts
            yield plant.after(out_start - t) if out_start > t else plant.step_event
    apply(0.0)
    fb.active.pop(fid, None)
    plant.log("training", f"malfunction {m.kind} on {m.target} cleared")
