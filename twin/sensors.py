"""The PLC's view of the twin: tags bound to flowsheet signals, sensor noise, analyser delay.

Measured value of a sensor tag at a scan: ``eng = scale·si + offset + N(0, noise_sd)``, drawn
once per synchronisation step from the plant's seeded generator (so a run is reproducible).
An analyser samples every ``period_s`` and reports the sampled value ``delay_s`` later, with its
source timestamp at the *sample* time (that is what the estimator needs).
The PLC sequences (``twin.sequences``) act on ``reading``: the same reported sample a client
sees, never the signal behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pilot_config.tags import Tag

from .flowsheet import Flowsheet
from .signals import Quality, Sample, WriteResult


@dataclass(frozen=True, slots=True)
class Reading:
    """One instrument reading as a PLC sequence uses it."""

    si: float  # SI (the twin signal's unit)
    eng: float  # engineering unit of the tag
    unit: str
    sample_t: float  # plant time of the sample (s)


class UnknownSignalError(KeyError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class BoundTag:
    tag: Tag
    block: object
    kind: str  # 'y' or 'u'
    index: int
    scale: float
    offset: float

    def si(self) -> float:
        arr = self.block.y if self.kind == "y" else self.block.u  # type: ignore[attr-defined]
        return float(arr[self.index])


def bind_tags(tags: list[Tag], flowsheet: Flowsheet) -> dict[str, BoundTag]:
    """Resolve every tag's signal; collect all unknown signals in one error."""
    bound, problems = {}, []
    known = None
    for i, tag in enumerate(tags):
        try:
            block, kind, index = flowsheet.resolve(tag.signal, prefer_input=tag.writable)
        except KeyError:
            known = known or flowsheet.signal_names()
            head = tag.plant_unit
            near = [s for s in known if s.startswith(head + ".")][:8]
            problems.append(
                f"tags[{i}] ({tag.name}): unknown signal {tag.signal!r}"
                + (f"; signals of {head!r} include {near}" if near else
                   f"; blocks are {sorted(flowsheet.blocks)}")
            )
            continue
        if tag.writable and kind != "u":
            problems.append(f"tags[{i}] ({tag.name}): {'an' if tag.kind[0] in 'aeiou' else 'a'} {tag.kind} must name a unit input, "
                            f"{tag.signal!r} is an output")
            continue
        scale, offset = tag.conversion()
        bound[tag.name] = BoundTag(tag, block, kind, index, scale, offset)
    if problems:
        raise UnknownSignalError(problems)
    return bound


class TagLayer:
    """Scans, noise, analysers, quality overrides and checked writes for a bound tag set."""

    def __init__(self, bound: dict[str, BoundTag], rng: np.random.Generator, epoch_s: float = 0.0):
        self.bound = bound
        self.rng = rng
        self.epoch_s = epoch_s
        self.quality_override: dict[str, Quality] = {}
        #: training hooks (twin.malfunctions): per-tag signal faults, writes refused (tripped pumps)
        self.signal_faults: dict = {}
        self.locked: dict[str, str] = {}
        self._scan: dict[str, Sample] = {}
        self._analysers: dict[str, Sample] = {}
        self.analyser_tags = [n for n, b in bound.items() if b.tag.kind == "analyser"]

    def measure(self, name: str) -> tuple[float, Quality]:
        """Noisy reading, saturated at the instrument's range like a 4-20 mA loop; a true value
        outside the range reads as the range end with UNCERTAIN quality."""
        b = self.bound[name]
        value = b.scale * b.si() + b.offset
        quality = Quality.GOOD if b.tag.low <= value <= b.tag.high else Quality.UNCERTAIN
        if b.tag.noise_sd > 0:
            value += self.rng.normal(0.0, b.tag.noise_sd)
        return min(max(float(value), b.tag.low), b.tag.high), quality

    def scan(self, t: float, names=None) -> None:
        """Refresh every non-analyser tag (or only those in ``names``) at plant time ``t`` (after
        a physics step of their blocks). A tag left out still takes its noise draw, so the noise
        a tag shows does not depend on which others were scanned with it."""
        stamp = self.epoch_s + t
        for name, b in self.bound.items():
            if b.tag.kind == "analyser":
                continue
            if names is None or name in names:
                value, quality = self.measure(name)
                self._scan[name] = Sample(value, stamp, quality)
            elif b.tag.noise_sd > 0:
                self.rng.normal(0.0, b.tag.noise_sd)

    def report_analyser(self, name: str, reading: tuple[float, Quality], sample_t: float) -> None:
        self._analysers[name] = Sample(reading[0], self.epoch_s + sample_t, reading[1])

    def snapshot(self) -> dict[str, Sample]:
        out = {**self._scan, **self._analysers}
        for name, q in self.quality_override.items():
            s = out.get(name)
            if s is not None:
                out[name] = Sample(s.value, s.source_time, q)
        if self.signal_faults:
            for name, fault in self.signal_faults.items():
                if name in out:
                    out[name] = fault.apply(out[name])
        return out

    def sample(self, name: str) -> Sample | None:
        """The latest sample of one tag, before signal faults."""
        return self._analysers.get(name) or self._scan.get(name)

    def reading(self, name: str) -> Reading | None:
        """What a PLC sequence sees of one instrument: its latest sample as reported (noise,
        period, delay, quality override, signal fault), in SI and in its engineering unit, with
        the plant time it was *sampled* at; None before the first report or while it is BAD."""
        s = self.sample(name)
        if s is None:
            return None
        q = self.quality_override.get(name)
        if q is not None:
            s = Sample(s.value, s.source_time, q)
        fault = self.signal_faults.get(name) if self.signal_faults else None
        if fault is not None:
            s = fault.apply(s)
        if s.quality == Quality.BAD:
            return None
        b = self.bound[name]
        return Reading((s.value - b.offset) / b.scale, s.value, b.tag.unit, s.source_time - self.epoch_s)

    def write(self, values: Mapping[str, float]) -> WriteResult:
        accepted, refused = [], {}
        for name, value in values.items():
            b = self.bound.get(name)
            if b is None:
                refused[name] = "unknown tag"
            elif not b.tag.writable:
                refused[name] = f"read-only ({b.tag.kind})"
            elif self.locked and name in self.locked:
                refused[name] = self.locked[name]
            elif not np.isfinite(value) or not (b.tag.low <= value <= b.tag.high):
                refused[name] = f"out of range: {value} not in [{b.tag.low}, {b.tag.high}] {b.tag.unit}"
            else:
                b.block.u[b.index] = (value - b.offset) / b.scale  # type: ignore[attr-defined]
                accepted.append(name)
        return WriteResult(tuple(accepted), refused)
