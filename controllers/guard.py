"""The write guard: every value a controller or operator proposes passes here before a PLC write.

Per proposed tag, in this order (the first that applies decides):

1. hold  - unknown / read-only tag, non-finite proposal, a reason handed in by the caller (e.g. the
           MPC missed its deadline), a tag the PLC denied (``deny``: BadUserAccessDenied, held
           until its loop's mode changes), a tag whose own sample says the link to its PLC is down
           (BadCommunicationError / BadNotConnected: held, never sent to be refused every tick),
           or a loop input that is BAD, missing or stale:
           ``t − source_time > stale_periods · control_period_s``. Held tags are not written: the
           PLC keeps the last value written (the last safe value) and ``held`` says why.
2. clamp - to the engineered limits [max(tag.low, low_eng), min(tag.high, high_eng)];
3. rate  - |u − u_ref| ≤ r · (t − t_ref), r = min(tag.max_rate_per_s, max_rate_eng_per_s), where
           u_ref is the last value the guard let through at t_ref; before the first one (or after
           a change of mode) it is the tag's read-back, with one control period as elapsed time.
           No reference (read-back BAD or missing) holds the tag. After a PLC's reconnect the
           caller hands the re-read values to ``restart`` (bumpless from the read-back).
4. mode  - per loop: ``manual`` nothing written (the operator owns the tag), ``advisory`` the
           guarded value is recorded in ``advisory`` and not written, ``auto`` it is in ``to_write``.
           Writable tags in no loop take ``default_mode``.

A watchdog toggles 0/1 every tick; if ``watchdog_tag`` is configured it is written every tick in
every mode, so the PLC can fall back to its own control when the guard stops.

Session rule (ARCHITECTURE.md): a guard built for a *training* or *standalone* session refuses a
*live* target at construction (``LiveWriteForbidden``): training can never write to a live PLC.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pilot_config.control import GuardConfig, LoopMode
from pilot_config.tags import Tag
from twin.signals import Quality, Sample, Snapshot

__all__ = ["Guard", "GuardResult", "LiveWriteForbidden", "Session", "Target", "check_session"]
log = logging.getLogger(__name__)
Target = Literal["live", "twin"]
Session = Literal["live", "training", "standalone"]
_MODES = ("manual", "advisory", "auto")
_DEFAULT_LOOP = "<default>"
#: OPC UA status codes of a sample whose PLC link is down (the bridge marks them; values from the spec)
BAD_COMMUNICATION_ERROR = 0x80050000
BAD_NOT_CONNECTED = 0x808A0000
LINK_DOWN_STATUSES = frozenset({BAD_COMMUNICATION_ERROR, BAD_NOT_CONNECTED})


class LiveWriteForbidden(PermissionError):
    """A training or standalone session tried to drive a live PLC endpoint."""


def check_session(target: str, session: str) -> None:
    """Raise unless ``session`` may write to ``target``."""
    if target not in ("live", "twin"):
        raise ValueError(f"target must be 'live' or 'twin'; got {target!r}")
    if session not in ("live", "training", "standalone"):
        raise ValueError(f"session must be 'live', 'training' or 'standalone'; got {session!r}")
    if target == "live" and session != "live":
        raise LiveWriteForbidden(
            f"a {session} session can never write to a live PLC endpoint; "
            "point it at the twin (pilot plc-sim) or run it as a live session")


@dataclass(frozen=True)
class GuardResult:
    t: float
    to_write: Mapping[str, float]
    held: Mapping[str, str]
    clamped: Mapping[str, tuple[float, float, str]]
    advisory: Mapping[str, float]
    mode: Mapping[str, str]
    watchdog: int
    proposed: Mapping[str, float] = field(default_factory=dict)


@dataclass
class _Ref:
    value: float
    t: float


class Guard:
    def __init__(self, config: GuardConfig, tags: Sequence[Tag], *, target: Target, session: Session):
        check_session(target, session)
        self.target, self.session = target, session
        self.config = config
        self.tags = {t.name: t for t in tags}
        self.period = config.control_period_s
        self.stale_after_s = config.stale_periods * config.control_period_s
        self.loop_of: dict[str, str] = {}
        self.inputs: dict[str, tuple[str, ...]] = {_DEFAULT_LOOP: ()}
        self.modes: dict[str, str] = {_DEFAULT_LOOP: config.default_mode}
        for lp in config.loops:
            self.modes[lp.name] = lp.mode
            self.inputs[lp.name] = tuple(lp.inputs)
            for tag in lp.writes:
                self.loop_of[tag] = lp.name
        self.limits = {n: self._limits(t) for n, t in self.tags.items() if t.writable}
        self._check_names()
        self._ref: dict[str, _Ref] = {}
        self.denied: dict[str, str] = {}  # tag -> why the PLC will not take it (held until a mode change)
        self._watchdog = 0
        self._last_t = -math.inf

    def _check_names(self) -> None:
        named = [*self.loop_of, *(n for ins in self.inputs.values() for n in ins), *(g.tag for g in self.config.limits)]
        if self.config.watchdog_tag:
            named.append(self.config.watchdog_tag)
        unknown = sorted({n for n in named if n not in self.tags})
        readonly = sorted({n for n in [*self.loop_of, self.config.watchdog_tag] if n in self.tags
                           and not self.tags[n].writable})
        if unknown or readonly:
            raise ValueError(f"guard config: unknown tags {unknown}, read-only tags to write {readonly}")

    def _limits(self, tag: Tag) -> tuple[float, float, float]:
        low, high, rate = tag.low, tag.high, tag.max_rate_per_s or math.inf
        for g in self.config.limits:
            if g.tag == tag.name:
                low = max(low, g.low_eng) if g.low_eng is not None else low
                high = min(high, g.high_eng) if g.high_eng is not None else high
                rate = min(rate, g.max_rate_eng_per_s) if g.max_rate_eng_per_s else rate
        if not low < high:
            raise ValueError(f"guard limits of {tag.name} leave no range: [{low}, {high}]")
        return low, high, rate

    # -- modes ---------------------------------------------------------------------------
    def set_mode(self, loop: str, mode: LoopMode) -> None:
        """Change a loop's mode; going to auto restarts the rate limit from the read-back (bumpless)."""
        if loop not in self.modes:
            raise KeyError(f"unknown loop {loop!r}; loops: {sorted(self.modes)}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
        if mode != self.modes[loop]:
            for tag in [t for t in self._ref if self.loop(t) == loop]:
                del self._ref[tag]
            for tag in [t for t in self.denied if self.loop(t) == loop]:
                del self.denied[tag]  # someone intervened: propose it again (once)
            log.info("loop %s: %s -> %s", loop, self.modes[loop], mode)
            self.modes[loop] = mode

    def loop(self, tag: str) -> str:
        return self.loop_of.get(tag, _DEFAULT_LOOP)

    # -- the tick ------------------------------------------------------------------------
    def _input_problem(self, loop: str, snapshot: Snapshot, t: float) -> str | None:
        for name in self.inputs[loop]:
            s = snapshot.get(name)
            if s is None:
                return f"input {name} missing"
            if s.quality == Quality.BAD:
                return f"input {name} bad quality"
            if t - s.source_time > self.stale_after_s:
                return f"input {name} stale ({t - s.source_time:.0f} s > {self.stale_after_s:.0f} s)"
        return None

    def _reference(self, tag: str, snapshot: Snapshot) -> _Ref | None:
        ref = self._ref.get(tag)
        if ref is not None:
            return ref
        s = snapshot.get(tag)
        if s is None or s.quality == Quality.BAD or not math.isfinite(s.value):
            return None
        return _Ref(s.value, -math.inf)

    def _guard_one(self, tag: str, u: float, snapshot: Snapshot, t: float
                   ) -> tuple[float | None, str | None, tuple[float, float, str] | None]:
        """(applied, hold reason, clamp record) for one proposal."""
        low, high, rate = self.limits[tag]
        unit = self.tags[tag].unit
        applied, clamp = u, None
        if u > high or u < low:
            applied = min(max(u, low), high)
            clamp = (u, applied, f"engineered limit {'high' if u > high else 'low'} {applied:g} {unit}")
        if math.isfinite(rate):
            ref = self._reference(tag, snapshot)
            if ref is None:
                return None, "no read-back for the rate limit", None
            dt = self.period if not math.isfinite(ref.t) else max(t - ref.t, 0.0)
            step = rate * dt
            if abs(applied - ref.value) > step:
                limited = ref.value + math.copysign(step, applied - ref.value)
                clamp = (u, limited, f"rate limit {rate:g} {unit}/s over {dt:g} s")
                applied = limited
        return applied, None, clamp

    def _hold_reason(self, tag: str, u: float, snapshot: Snapshot, problems: Mapping[str, str | None]) -> str | None:
        """Why ``tag`` is held this tick (rule 1 of the module docstring), or None."""
        if tag not in self.tags:
            return "unknown tag"
        if not self.tags[tag].writable:
            return f"read-only ({self.tags[tag].kind})"
        if not math.isfinite(u):
            return f"non-finite proposal {u}"
        if tag in self.denied:
            return f"denied by the PLC: {self.denied[tag]}"
        if self.modes[self.loop(tag)] == "manual":
            return f"loop {self.loop(tag)} in manual"
        if (link := _link_down(snapshot, tag)) is not None:
            return f"hold: PLC link down ({link})"
        if problems[self.loop(tag)]:
            return f"hold: {problems[self.loop(tag)]}"
        return None

    def step(self, proposals: Mapping[str, float], snapshot: Snapshot, t: float,
             hold: Mapping[str, str] | None = None) -> GuardResult:
        """Guard this tick's proposals; ``hold`` maps tags to reasons the caller already knows."""
        if t <= self._last_t:
            raise ValueError(f"guard time must increase: {t} after {self._last_t}")
        self._last_t = t
        self._watchdog ^= 1
        to_write: dict[str, float] = {}
        held: dict[str, str] = dict(hold or {})
        clamped: dict[str, tuple[float, float, str]] = {}
        advisory: dict[str, float] = {}
        problems = {lp: self._input_problem(lp, snapshot, t) for lp in self.modes}
        for tag, u in proposals.items():
            if tag in held:
                continue
            if (reason := self._hold_reason(tag, u, snapshot, problems)) is not None:
                held[tag] = reason
            else:
                applied, reason, clamp = self._guard_one(tag, float(u), snapshot, t)
                if reason:
                    held[tag] = reason
                    continue
                if clamp:
                    clamped[tag] = clamp
                if self.modes[self.loop(tag)] == "auto":
                    to_write[tag] = applied
                    self._ref[tag] = _Ref(applied, t)
                else:
                    advisory[tag] = applied
        if self.config.watchdog_tag:
            to_write[self.config.watchdog_tag] = float(self._watchdog)
        return GuardResult(t, to_write, held, clamped, advisory, dict(self.modes), self._watchdog, dict(proposals))

    def refused(self, tags: Mapping[str, str]) -> None:
        """Tell the guard the PLC refused some writes: their rate limit restarts from the read-back."""
        for tag in tags:
            self._ref.pop(tag, None)

    def accepted(self, values: Mapping[str, float], t: float) -> None:
        """The plant took ``values`` at ``t`` in place of this guard's own writes (a replay of a
        record): the rate limits move from them, as from a write of the guard's own at ``t``."""
        for tag, v in values.items():
            if tag in self.limits:
                self._ref[tag] = _Ref(float(v), t)

    def deny(self, tag: str, reason: str) -> bool:
        """The PLC answered a write of ``tag`` with BadUserAccessDenied: hold it (not proposed again)
        until its loop's mode changes. True when newly denied."""
        self._ref.pop(tag, None)
        if tag in self.denied:
            return False
        self.denied[tag] = reason
        return True

    def restart(self, read_back: Mapping[str, Sample]) -> None:
        """A PLC came back: the rate limit of each re-read tag restarts from its read-back value
        (one control period of movement at most on the next tick); a BAD read-back drops the
        reference (the tag is held until a good one)."""
        for tag, s in read_back.items():
            if tag not in self.limits:
                continue
            if s.quality == Quality.BAD or not math.isfinite(s.value):
                self._ref.pop(tag, None)
            else:
                self._ref[tag] = _Ref(float(s.value), -math.inf)


def _link_down(snapshot: Snapshot, tag: str) -> str | None:
    """The status name when the tag's own sample says its PLC link is down, else None."""
    s = snapshot.get(tag)
    if s is None or s.quality != Quality.BAD or s.status not in LINK_DOWN_STATUSES:
        return None
    return "BadNotConnected" if s.status == BAD_NOT_CONNECTED else "BadCommunicationError"
