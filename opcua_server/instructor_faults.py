"""The instructor's faults and snapshot names, in plain words (``opcua_server.instructor``).

- ``parse_fault("KIND@TARGET", severity, ramp_s)`` / ``malfunction_of(fields)``: a
  ``twin.malfunctions.Malfunction``, or ValueError with one sentence: a wrong kind lists the kinds,
  a severity out of range gives the kind's range, a bad field names it and what is allowed (never
  a validation dump).
- ``fault_views(session)``: the journalled faults, numbered in journal order, each with its state at
  session time t (scheduled, ramping in, active, ramping out, over); ``find_fault`` picks one by
  number, ``KIND@TARGET`` or ``KIND``.
- ``cleared_journal(session, view)``: the journal with the fault ending now. A fault with onset
  t_on and ramp r cleared at t gets ``duration_s = t - t_on``: its level ℓ(t') is unchanged for
  t' < t and ramps out as 1 - (t' - t)/r after (``Malfunction.level``), so the replayed session is
  the served one up to t. A fault not acting yet leaves the journal; one still ramping in is refused
  (the ramp out starts from full severity, so clearing it there would first raise it).
- ``snapshot_file(folder, name)``: ``name`` inside the server's snapshot folder, or ValueError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS, Malfunction

FAULT_KINDS = (*PROCESS_KINDS, *SIGNAL_KINDS)
_FIELDS = tuple(Malfunction.model_fields)
_TARGETS = {"feed_swing": "cascade or leach", "extractant_degradation": "the extraction block",
            "crud_entrainment": "the extraction block", "adsorbent_fouling": "a column, col1..colN",
            "anode_effect": "a cell name", "heater_failure": "a cell name", "electrolyte_contamination": "a cell name",
            "pump_trip": "a writable pump tag (SX.ORG.FLOW_SP)", "analyser_outage": "an analyser tag"}


def mmss(t_s: float) -> str:
    """Session time as min:s (``125:03`` beyond the hour)."""
    m, s = divmod(int(round(max(t_s, 0.0))), 60)
    return f"{m}:{s:02d}"


def kinds_sentence() -> str:
    return f"process faults {', '.join(PROCESS_KINDS)}; signal faults {', '.join(SIGNAL_KINDS)}"


def severity_range(kind: str) -> str:
    """What ``severity`` may be for ``kind`` (the checks of ``Malfunction``, in words)."""
    if kind == "feed_swing":
        return "the relative Dy/Tb change, -0.9..5"
    if kind == "noise_burst":
        return "a standard deviation in tag units, > 0"
    if kind == "drift":
        return "the full drift in tag units, -1e6..1e6"
    if kind in ("frozen_value", "bad_status", "analyser_outage"):
        return "not used (any value up to ±1e6)"
    return "the fraction lost, 0 < s <= 1"


def plain_error(exc: ValidationError) -> str:
    """The first problem of a validation error as one sentence (field, what is wrong, the value)."""
    e = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in e.get("loc", ())) or "malfunction"
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    if e.get("type") == "extra_forbidden":
        return f"unknown field {field!r}: allowed {', '.join(_FIELDS)}"
    if e.get("type") == "missing":
        return f"{field} is missing"
    return msg if e.get("type") == "value_error" else f"{field}: {msg}; got {e.get('input')!r}"


def malfunction_of(fields: dict) -> Malfunction:
    """A ``Malfunction`` from plain fields, or ValueError with one sentence naming what is allowed."""
    kind = fields.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}: use one of {kinds_sentence()}")
    if "severity" in fields:
        try:
            Malfunction(kind=kind, target="x", severity=fields["severity"])
        except ValidationError:
            raise ValueError(f"{kind}: severity is {severity_range(kind)}; got {fields['severity']!r}") from None
    try:
        return Malfunction.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(plain_error(exc)) from None


def parse_fault(text: str, severity: float = 1.0, ramp_s: float = 0.0) -> Malfunction:
    """``KIND@TARGET`` with a severity and a ramp (s), as a ``Malfunction`` starting now."""
    kind, _, target = text.strip().partition("@")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}: use one of {kinds_sentence()}")
    if not target:
        raise ValueError(f"give the fault as KIND@TARGET: {kind}@ takes {_TARGETS.get(kind, 'a tag name')}")
    return malfunction_of({"kind": kind, "target": target, "severity": severity, "ramp_s": ramp_s})


@dataclass(frozen=True)
class FaultView:
    """One journalled fault as the instructor sees it (session times)."""

    number: int
    index: int  # in the journal
    m: Malfunction
    onset_s: float

    @property
    def name(self) -> str:
        return f"{self.m.kind}@{self.m.target}"

    @property
    def end_s(self) -> float:
        return math.inf if self.m.duration_s is None else self.onset_s + self.m.duration_s + self.m.ramp_s

    def state(self, t: float) -> str:
        m, tau = self.m, t - self.onset_s
        if tau < 0:
            return "scheduled"
        if t >= self.end_s:
            return "over"
        if m.duration_s is not None and tau >= m.duration_s:
            return "ramping out"
        return "ramping in" if tau < m.ramp_s else "active"

    def line(self, t: float) -> str:
        state = self.state(t)
        when = ""
        if state == "scheduled":
            when = f" from {mmss(self.onset_s)}"
        elif state in ("ramping in", "ramping out"):
            when = f" until {mmss(self.onset_s + self.m.ramp_s if state == 'ramping in' else self.end_s)}"
        return f"{self.number} {self.name} severity {self.m.severity:g}, {state}{when}"


def fault_views(session) -> list[FaultView]:
    """Every fault of the session's journal, numbered in journal order."""
    views = []
    for i, a in enumerate(session.journal):
        if a.kind == "inject":
            m = Malfunction.model_validate(a.args["malfunction"])
            views.append(FaultView(len(views) + 1, i, m, max(m.onset_s, a.t)))
    return views


def find_fault(views: list[FaultView], text: str, t: float) -> FaultView:
    """The fault ``text`` names (number, KIND@TARGET or KIND), among those not over; ValueError else."""
    live = [v for v in views if v.state(t) != "over"]
    text = text.strip()
    hits = [v for v in live if text in (str(v.number), v.name, v.m.kind)]
    listing = "; ".join(v.line(t) for v in live) or "none"
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"{text!r} names {len(hits)} faults: give the number or KIND@TARGET ({listing})")
    return _no_fault(text, listing)


def _no_fault(text: str, listing: str) -> FaultView:
    kind = text.split("@")[0]
    if kind not in FAULT_KINDS and not kind.isdigit():
        raise ValueError(f"unknown fault kind {kind!r}: use one of {kinds_sentence()}")
    raise ValueError(f"no fault {text!r} scheduled or acting in the served session; faults: {listing}")


def cleared_journal(session, view: FaultView) -> list:
    """The session's journal with ``view``'s fault ending now (ramping out from now)."""
    t, journal = session.t, list(session.journal)
    state = view.state(t)
    if state == "ramping in":
        raise ValueError(f"fault {view.number} {view.name} is ramping in until {mmss(view.onset_s + view.m.ramp_s)}: "
                         "clear it once it is at full severity")
    if state == "ramping out":
        raise ValueError(f"fault {view.number} {view.name} is already ramping out, until {mmss(view.end_s)}")
    if t - view.onset_s <= 1e-9:  # not acting yet: it leaves the journal
        del journal[view.index]
        return journal
    a = journal[view.index]
    m = a.args["malfunction"] | {"duration_s": t - view.onset_s}
    journal[view.index] = a.model_copy(update={"args": a.args | {"malfunction": m}})
    return journal


def snapshot_file(folder: Path, name: str, *, exists: bool = False) -> Path:
    """``name`` inside ``folder`` (ValueError for a name that resolves outside it, or a missing file)."""
    root = folder.resolve()
    path = (root / name).resolve()
    if not name.strip() or path == root or not path.is_relative_to(root):
        raise ValueError(f"snapshot files live in the server's folder {root}: give a file name inside it; got {name!r}")
    if exists and not path.is_file():
        there = ", ".join(sorted(p.name for p in root.glob("*.json"))) if root.is_dir() else ""
        raise ValueError(f"no snapshot {name!r} in the server's folder {root} (there: {there or 'none'})")
    return path
