"""Training scenarios (YAML), the scripted trainee, the run and its score.

A scenario names an initial condition, the malfunctions (session times), the expected operator
responses with their points, the process specs (time out of spec is penalised) and the product
spec (off-spec Tb product made is penalised), and declares what its shipped scripted trainee
should achieve (``expected``), which the tests check by running it.

    score = max(0, 100·Σ points of responses met / Σ points
                   − Σ_spec min(max_penalty, penalty_per_min·minutes out)
                   − off_spec.points · kg off-spec / kg produced in the session
                   − min(unacknowledged.max_penalty, unacknowledged.points_per_alarm·alarms unacknowledged
                         at the end + unacknowledged.points_per_min·Σ minutes each alarm stood unacknowledged))

The off-spec term is relative to what the plant made over the session, so it means the same at a
gram-scale pilot line as at a tonne-scale plant: 61 min off spec in a steady 2 h session costs about
half of ``off_spec.points``. An alarm stands unacknowledged from its raise until it is acknowledged
or shelved (or the session ends), whether or not it has returned to normal (ISA-18.2 state D).

A response is timed from the first raise of ``after_alarm`` (or from ``after_s``, default the first
malfunction's onset): ``acknowledge`` is met when that alarm is acknowledged within ``within_s``;
``setpoint`` when the trainee writes ``tag`` above / below the value within ``within_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, TypeAdapter, model_validator

from controllers.alarms_support import AlarmState
from pilot_config import load_yaml
from pilot_config.base import MOLAR_MASS_G_PER_MOL, StrictModel
from twin.malfunctions import Malfunction

from .session import Action, InitialCondition, Tick, TrainingSession


def shipped_scenario_dir() -> Path:
    """The scenarios and scripted trainees shipped as package data (``pilot/training/scenarios``),
    found through ``importlib.resources`` so an installed wheel finds them as a checkout does."""
    root = resources.files(__package__) / "scenarios"
    if not isinstance(root, Path):  # a zipped install: the files have no path to hand on
        raise RuntimeError(f"the shipped scenarios {root} are not on a file system; install the package unzipped")
    return root


SCENARIO_DIR = shipped_scenario_dir()


class Response(StrictModel):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    kind: Literal["acknowledge", "setpoint"]
    alarm: str | None = Field(None, description="acknowledge: the alarm")
    tag: str | None = Field(None, description="setpoint: the tag written")
    above: float | None = None
    below: float | None = None
    after_alarm: str | None = Field(None, description="timed from this alarm's first raise")
    after_s: float | None = Field(None, ge=0, description="timed from this time into the session (s)")
    within_s: float = Field(gt=0, le=86400)
    points: float = Field(gt=0, le=100)
    text: str = ""

    @model_validator(mode="after")
    def _fields(self) -> Response:
        if self.kind == "acknowledge" and not self.alarm:
            raise ValueError(f"response {self.id}: acknowledge needs alarm")
        if self.kind == "setpoint" and (not self.tag or (self.above is None) == (self.below is None)):
            raise ValueError(f"response {self.id}: setpoint needs tag and exactly one of above/below")
        return self


class Spec(StrictModel):
    tag: str
    low: float | None = None
    high: float | None = None
    penalty_per_min: float = Field(0.2, ge=0, le=100)
    max_penalty: float = Field(20.0, ge=0, le=100)


class OffSpec(StrictModel):
    tb_purity_min_percent: float = Field(99.5, ge=50, le=100, description="Tb product (SX raffinate) spec")
    points: float = Field(20.0, ge=0, le=100, description="lost in full when all the session's product is off spec")


class Unacknowledged(StrictModel):
    points_per_alarm: float = Field(1.0, ge=0, le=100, description="per alarm still unacknowledged at the end")
    points_per_min: float = Field(0.05, ge=0, le=100, description="per minute an alarm stood unacknowledged")
    max_penalty: float = Field(15.0, ge=0, le=100)


class ScriptedAction(StrictModel):
    """A scripted trainee's action: at a session time, or ``delay_s`` after an alarm's first raise."""

    at_s: float | None = Field(None, ge=0)
    on_alarm: str | None = None
    delay_s: float = Field(0.0, ge=0)
    ack: str | None = None
    write: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> ScriptedAction:
        if (self.at_s is None) == (self.on_alarm is None):
            raise ValueError("give exactly one of at_s, on_alarm")
        if (self.ack is None) == (self.write is None):
            raise ValueError("give exactly one of ack, write")
        return self


class Expected(StrictModel):
    trainee: str = Field(description="scripted trainee file, relative to the scenario")
    met: list[str] = Field(default_factory=list, description="responses it meets (the others it misses)")
    score_min: float = Field(ge=0, le=100)
    score_max: float = Field(ge=0, le=100)


class Scenario(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9-]+$")
    title: str
    teaches: str = ""
    initial: InitialCondition = "steady_state"
    duration_s: float = Field(gt=0, le=7 * 86400)
    malfunctions: list[Malfunction] = Field(default_factory=list)
    responses: list[Response] = Field(min_length=1)
    spec: list[Spec] = Field(default_factory=list)
    off_spec: OffSpec = OffSpec()
    unacknowledged: Unacknowledged = Unacknowledged()
    plot_tags: list[str] = Field(default_factory=list)
    control: bool = Field(False, description="run the closed loop (estimators, MPC, guard) in the session")
    modes: dict[str, Literal["manual", "advisory", "auto"]] = Field(default_factory=dict,
                                                                    description="control-loop modes")
    expected: Expected | None = None

    def check(self, config) -> None:
        tags = {t.name for t in config.tags}
        alarms = _alarm_ids(config)
        bad = [r.tag for r in self.responses if r.tag and r.tag not in tags]
        bad += [s.tag for s in self.spec if s.tag not in tags] + [n for n in self.plot_tags if n not in tags]
        bad += [a for r in self.responses for a in (r.alarm, r.after_alarm) if a and a not in alarms]
        if bad:
            raise ValueError(f"scenario {self.name}: unknown tags / alarms {bad}")


def _alarm_ids(config) -> set[str]:
    from controllers.alarms import AlarmManager
    return set(AlarmManager(config.control.alarms, config.tags).index)


def scenario_dirs(extra: Sequence[Path | str] = ()) -> list[Path]:
    """Where scenario and trainee names are looked up, first match wins: a trainer's own folders in
    the order given, then the shipped scenarios."""
    return [Path(d) for d in extra] + [SCENARIO_DIR]


def find_scenario(name: Path | str, dirs: Sequence[Path | str] = ()) -> Path:
    """The file of a scenario: ``name`` itself when it is a file, else ``<name>.yaml`` in a trainer's
    folder (``dirs``) or among the shipped ones; ``FileNotFoundError`` when there is none."""
    path = Path(name)
    if path.is_file():
        return path
    if not str(name).endswith(".trainee"):
        for d in scenario_dirs(dirs):
            if (d / f"{name}.yaml").is_file():
                return d / f"{name}.yaml"
    raise FileNotFoundError(path)


def load_scenario(path: Path | str, dirs: Sequence[Path | str] = ()) -> Scenario:
    """A scenario file, or the name of one in ``dirs`` or shipped; ``FileNotFoundError`` when neither
    exists, ``ConfigError`` listing every problem of an invalid file."""
    return load_yaml(find_scenario(path, dirs), Scenario)


def shipped_scenarios(dirs: Sequence[Path | str] = ()) -> list[Path]:
    """Every scenario file, sorted by name: the shipped ones and those of a trainer's folders
    (``dirs``), where a trainer's file hides a shipped one of the same name."""
    found: dict[str, Path] = {}
    for d in scenario_dirs(dirs):
        for p in sorted(d.glob("*.yaml")):
            if not p.name.endswith(".trainee.yaml"):
                found.setdefault(p.stem, p)
    return [found[k] for k in sorted(found)]


def scenario_names(dirs: Sequence[Path | str] = ()) -> list[str]:
    return [p.stem for p in shipped_scenarios(dirs)]


def find_trainee(path: Path | str, dirs: Sequence[Path | str] = ()) -> Path:
    """A scripted trainee file: ``path`` when it exists, else that file (or ``<path>.trainee.yaml``)
    in a trainer's folder or among the shipped scenarios; ``path`` unchanged when there is none."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    for d in scenario_dirs(dirs):
        for candidate in (d / path, d / f"{path}.trainee.yaml"):
            if candidate.is_file():
                return candidate
    return path


def load_trainee(path: Path | str, dirs: Sequence[Path | str] = ()) -> list[ScriptedAction]:
    """A scripted trainee's actions (a YAML list; a file, or one by name beside the scenarios, see
    ``find_trainee``); ``ConfigError`` listing every problem, or naming a file not found."""
    return load_yaml(find_trainee(path, dirs), _ACTIONS) or []


_ACTIONS = TypeAdapter(list[ScriptedAction] | None)


class ScriptedTrainee:
    """Submits its actions to the session as their time comes (a session listener)."""

    def __init__(self, actions: list[ScriptedAction]):
        self.actions = actions
        self.done: set[int] = set()

    def __call__(self, session: TrainingSession, tick: Tick) -> None:
        raised = _first_raise(session)
        for i, a in enumerate(self.actions):
            if i in self.done:
                continue
            t = a.at_s if a.at_s is not None else (raised.get(a.on_alarm, np.inf) + a.delay_s)
            if t <= tick.t + 1e-9:
                self.done.add(i)
                if a.ack:
                    session._pending.append(Action(t=tick.t, kind="ack", args={"alarm": a.ack}))
                else:
                    session._pending.append(Action(t=tick.t, kind="write", args={"values": a.write}))
        due = [x for x in session._pending if x.t <= tick.t + 1e-9]
        session._pending = [x for x in session._pending if x.t > tick.t + 1e-9]
        for x in due:
            session._apply(x)


def _first_raise(session: TrainingSession) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in session.alarms.journal:
        if e.to_state == AlarmState.UNACK_ACTIVE:
            out.setdefault(e.alarm_id, e.t)
    return out


class Recorder:
    """Collects what the report needs, tick by tick."""

    def __init__(self, tags: list[str]):
        self.tags = tags
        self.t: list[float] = []
        self.values: dict[str, list[float]] = {n: [] for n in tags}
        self.off_spec_kg = 0.0
        self.product_kg = 0.0

    def __call__(self, session: TrainingSession, tick: Tick, off_spec: OffSpec | None = None) -> None:
        self.t.append(tick.t)
        for n in self.tags:
            s = tick.snapshot.get(n)
            self.values[n].append(s.value if s is not None else np.nan)
        if off_spec is not None and tick.t > 0:
            sig = session.plant.signal
            kg = sig("extraction.raffinate.flow") * sig("extraction.raffinate.Tb") * session.tc.tick_s \
                * MOLAR_MASS_G_PER_MOL["Tb"] / 1000.0
            self.product_kg += kg
            if 100.0 * sig("extraction.tb_purity") < off_spec.tb_purity_min_percent:
                self.off_spec_kg += kg


def run_scenario(scenario: Scenario, config, *, trainee: list[ScriptedAction] | None = None,
                 seed: int | None = None, speed: float | None = None, session_id: str | None = None,
                 on_tick=None, control: bool | None = None, trainee_name: str = "", instructor: str = "",
                 config_path: str | None = None):
    """Run a scenario to its end; returns (session, recorder). ``trainee_name``, ``instructor`` and
    ``config_path`` (the plant file) go into the training record of the report."""
    scenario.check(config)
    session = TrainingSession(config, initial=scenario.initial, seed=seed, session_id=session_id,
                              control=scenario.control if control is None else control, modes=scenario.modes,
                              trainee=trainee_name, instructor=instructor, config_path=config_path)
    for m in scenario.malfunctions:
        session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    tags = list(dict.fromkeys([s.tag for s in scenario.spec] + [r.tag for r in scenario.responses if r.tag]
                              + scenario.plot_tags))
    rec = Recorder(tags)
    rec(session, session.last)
    session.listeners.append(lambda s, tk: rec(s, tk, scenario.off_spec))
    if trainee:
        session.listeners.append(ScriptedTrainee(trainee))
    if on_tick is not None:
        session.listeners.append(on_tick)
    from .session import Pacer
    try:
        session.run_for(scenario.duration_s, None if speed is None else Pacer(speed))
    finally:
        session.close()  # the control loop's workers; the session and its record stay readable
    return session, rec
