"""A served training session as a whole plant, scored live.

``serve_plant`` runs, in one process and on one event loop:

- the session's twin behind its simulated PLC with the instructor controls
  (``opcua_server.instructor.serve_training``): what the trainee's HMI and ``pilot train
  instructor`` connect to;
- the control loop of ``pilot run`` against that PLC through OPC UA (``pilot.live.run_live``):
  bridge, estimators, MPC, guard, ISA-18.2 alarms and the secured operator server with its Alarms
  & Conditions, recording to the historian under the session's id as its ``session`` tag. Its
  target is decided by asking the PLC what it is (``target="auto"``): the PLC identifies itself as
  a twin, so the training session may drive it; a plant PLC would be refused. The loop logs in to
  the PLC as ``control-loop`` with a random password added to the PLC's users for this process
  only, so its writes are never taken for the trainee's;
- ``LiveScore``: the session's record kept as it happens — alarms and acknowledgements from the
  loop's alarm journal (the alarms the trainee sees and answers, with the authenticated user),
  setpoint writes from the session's journal (each with the user of the OPC UA session that wrote
  it), values and product from a recorder on the session — scored by the same pure function as a
  scripted run (``report.score_record``). The score and the open objectives are published on the
  instructor object (``Instructor.Score``, ``Instructor.OpenObjectives``) every second.

The session ends by its duration, by the instructor's ``End`` or by SIGTERM / Ctrl-C; the report
(HTML, PDF, trends) is written into the run folder then, beside the loop's ``summary.json``,
``audit.jsonl`` (every operator action with its user) and ``alarms.sqlite``.

Times: the loop stamps alarm transitions in the PLC's plant time (Unix s), which is the session
time plus the PLC's epoch; the record is kept in session time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from controllers.alarms_support import JournalEntry
from opcua_server.client_security import ClientSecurity
from opcua_server.server_security import ServerSecurity

from .report import (
    NOT_TRAINEE,
    Score,
    SessionRecord,
    alarm_rows,
    config_sha256,
    score_record,
    write_report,
)
from .scenario import Recorder, Scenario

log = logging.getLogger(__name__)
LOOP_USER = "control-loop"  # the in-process control loop's login on the served PLC


class LiveScore:
    """The record of a served session, kept tick by tick, and its score at any time.

    ``session_of()`` answers the session now being served (a Restore or Backtrack swaps it);
    ``epoch_of()`` the PLC's epoch (plant Unix time of session time 0)."""

    def __init__(self, scenario: Scenario, session_of, epoch_of, *, instructor: str = ""):
        self.scenario, self.session_of, self.epoch_of = scenario, session_of, epoch_of
        self.instructor = instructor
        self.entries: list[JournalEntry] = []
        tags = list(dict.fromkeys([s.tag for s in scenario.spec] + [r.tag for r in scenario.responses if r.tag]
                                  + scenario.plot_tags))
        self.recorder = Recorder(tags)
        session = session_of()
        self.recorder(session, session.last)
        session.listeners.append(lambda s, tick: self.recorder(s, tick, scenario.off_spec))

    def on_tick(self, tick, result=None) -> None:
        """run_live's ``on_tick``: the loop's alarm transitions, in session time."""
        epoch = self.epoch_of()
        self.entries += [replace(e, t=e.t - epoch) for e in tick.alarms]

    def settle(self, alarm_state: Path) -> None:
        """At the end: the complete alarm journal from the loop's alarm state store (the ticks carry
        an operator action only with the tick after it; the store has it at once)."""
        from pilot.alarm_store import AlarmStore

        if not Path(alarm_state).is_file():
            return
        store = AlarmStore(alarm_state)
        try:
            epoch = self.epoch_of()
            self.entries = [replace(e, t=e.t - epoch) for e in store.journal()]
        finally:
            store.close()

    def trainees(self) -> list[str]:
        """Who acted on the plant: the users of the journalled writes and alarm actions."""
        session = self.session_of()
        names = [a.by for a in session.journal if a.by not in NOT_TRAINEE and a.by != LOOP_USER]
        names += [e.operator for e in self.entries if e.operator and e.operator != LOOP_USER]
        return list(dict.fromkeys(names))

    def record(self) -> SessionRecord:
        s, rec = self.session_of(), self.recorder
        return SessionRecord(
            scenario=self.scenario.name, session_id=s.session_id, t_end=s.t, tick_s=s.tc.tick_s,
            alarms=tuple(alarm_rows(self.entries)),
            actions=tuple(a for a in s.journal if a.by != LOOP_USER), t=tuple(rec.t),
            values={k: tuple(v) for k, v in rec.values.items()}, off_spec_kg=rec.off_spec_kg,
            product_kg=rec.product_kg, trainee=", ".join(self.trainees()) or s.trainee,
            instructor=self.instructor or s.instructor, started_utc=s.started_utc,
            config_sha256=config_sha256(s.config))

    def score(self) -> Score:
        return score_record(self.scenario, self.record())

    def open_objectives(self, score: Score | None = None) -> list[str]:
        score = score or self.score()
        return [f"{r.id}: {r.text}" for r in score.responses if not r.met]


@dataclass(frozen=True)
class ServedOptions:
    """Where and how a whole-plant session is served (see ``serve_plant``)."""

    plc_endpoint: str
    operator_endpoint: str
    plc_security: ServerSecurity
    operator_security: ServerSecurity | None  # None: ``secure`` with the environment's users and PKI
    out_dir: Path
    speed: float = 1.0
    duration_s: float | None = None  # wall seconds (None: until End or a signal)
    mode: str = "advisory"  # the control loops' mode (the trainee's job is to act)
    snapshot_dir: Path = Path("training-snapshots")
    instructor: str = ""
    handle_signals: bool = False
    loop_options: dict = field(default_factory=dict)


@dataclass
class ServedResult:
    score: Score
    report: Path
    live: object  # pilot.live.LiveResult
    ended_by: str  # "instructor <user>", "duration" or "signal"


def loop_login(security: ServerSecurity) -> tuple[ServerSecurity, ClientSecurity]:
    """The PLC's security with the control loop's own user added (anonymous access as before), and
    the loop's client side: same PKI (its own certificate is trusted), a random password."""
    password = secrets.token_urlsafe(24)
    served = replace(security, users=security.users.with_user(LOOP_USER, password, "engineer"),
                     allow_anonymous=security.anonymous)
    client = ClientSecurity(pki=security.pki, username=LOOP_USER,
                            password=password, allow_plaintext_password=True)  # in-process, loopback
    return served, client


async def serve_plant(session, scenario: Scenario, opts: ServedOptions, *, restore=None,
                      stop: asyncio.Event | None = None) -> ServedResult:
    """Serve ``session`` as a whole plant until its end; write and return its report."""
    from opcua_server.instructor import serve_training
    from pilot.live import run_live

    stop = stop or asyncio.Event()
    plc_security, client = loop_login(opts.plc_security)
    served: dict = {}
    started = asyncio.Event()
    plc = asyncio.create_task(serve_training(
        session, opts.plc_endpoint, speed=opts.speed, stop=stop, started=started, duration_s=opts.duration_s,
        security=plc_security, restore=restore, scenario=scenario.name, snapshot_dir=opts.snapshot_dir,
        ready=lambda server: served.setdefault("server", server)))
    await _first(started, plc)
    server = served["server"]
    scorer = LiveScore(scenario, lambda: server.instructor.plant.session, lambda: server.epoch_s,
                       instructor=opts.instructor)
    server.instructor.extra_state = lambda: _score_state(scorer)
    out_dir = Path(opts.out_dir)
    try:
        live = await run_live(session.config, opts.plc_endpoint, mode=opts.mode, out_dir=out_dir,
                              session="training", target="auto", operator_endpoint=opts.operator_endpoint,
                              operator_security=opts.operator_security, stop=stop, on_tick=scorer.on_tick,
                              bridge_options={"security": client}, alarm_state=out_dir / "alarms.sqlite",
                              handle_signals=opts.handle_signals, session_label=session.session_id,
                              **opts.loop_options)
    finally:
        stop.set()
        await plc
    ended, signal = server.instructor.ended_by, live.summary.get("stopped_by", "")
    ended_by = (f"instructor {ended}" if ended else f"signal {signal}" if signal.startswith("SIG") else "duration")
    if ended and not scorer.instructor:
        scorer.instructor = ended
    scorer.settle(out_dir / "alarms.sqlite")
    score = scorer.score()
    report = write_report(scenario, scorer.session_of(), scorer.recorder, score, out_dir)
    log.info("training session %s ended (%s): score %.1f, report %s", session.session_id, ended_by, score.score,
             report)
    return ServedResult(score, report, live, ended_by)


def _score_state(scorer: LiveScore) -> tuple:
    """The instructor object's extra variables: the live score and the objectives still open."""
    from asyncua import ua

    score = scorer.score()
    return (("Score", float(score.score), ua.VariantType.Double),
            ("OpenObjectives", scorer.open_objectives(score) or [""], ua.VariantType.String),
            ("Trainees", scorer.trainees() or [""], ua.VariantType.String))


async def _first(started: asyncio.Event, task: asyncio.Task) -> None:
    """Wait until the PLC serves, or raise what stopped it from starting."""
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what failed
        raise RuntimeError("the simulated PLC stopped before it served")
