"""``pilot run``: the control loop live against the line's PLCs (or ``pilot plc-sim``) over OPC UA.

    PlantLink.read() ─▶ ControlLoop.step(snapshot, τ, links) ─▶ PlantLink.write(writes) ─▶ refused?
      (one session           │ points                          (logged, counted, recorded; denied:
       per PLC)              ▼                                   held for good, one alarm)
     process points ──▶ recorder (embedded store in --out, or InfluxDB from PILOT_INFLUX_*)

**PLCs.** ``plcs``: one URL = every tag on that one server (a PLC named ``plc``); a mapping
``{name: URL}`` = the config's PLCs with those endpoints replaced; None = the config's PLCs
(``opcua.plcs``, or the single ``opcua.endpoint``). One ``PlantLink`` session per PLC, each with its
own reconnect.

**Isolation.** The loop ticks while any PLC is up. A down PLC's tags are BAD (BadNotConnected, and a
BadCommunicationError point at each end of the outage in the historian): the loops whose inputs
live there hold (the guard's bad-input rule), a tag on a down PLC is held ("PLC link down"), never
sent to be refused every tick; the other loops keep ticking and writing. Each PLC has the process
point ``PLC.<name>.LINK`` (1 up, 0 down, at start and at every transition; also a variable of the
operator server) and the alarm ``PLC.<name>.COMM`` (priority 1), raised on the first tick after
the loss, or at once when no PLC is left up.

**Restarts.** When a PLC is back its writable tags are re-read (``read_now``) before the next tick
and the guard's rate limits restart from the read-back (bumpless). A PLC clock that stepped (a
restarted simulator) is re-based onto the line's clock (``live_support.LineClock``): the first
tick comes within one control period of the return. A write answered BadUserAccessDenied is
held as denied from then on: one WARNING, one ``<TAG>.DENIED`` alarm, listed in the summary.

**Clock.** The loop runs on the line's clock τ (the PLCs' newest source times, re-based as above).
It ticks when τ has advanced by ``control_period_s`` since the last tick, polling every ``poll_s``
of wall time, so it follows a simulated PLC at ``--speed`` × real time as well as a real one.

**Stopping.** ``stop`` set (``handle_signals``: by SIGTERM or SIGINT) ends the run after the tick in
progress: the operator server and the sessions close, the recorder flushes within
``flush_timeout_s`` (10 s; what InfluxDB does not take stays in the disk spool), then
``summary.json`` is written. Every ``status_every_s`` wall seconds one status line is logged.

**Session rule.** The ``ControlLoop`` (and so its ``Guard``) is built *before* connecting: a
training or standalone session with a live target raises ``LiveWriteForbidden``; ``target="auto"``
(what ``pilot run`` passes) asks every PLC what it is (``opcua_server.identity``): a training
session runs only against servers that identify themselves as twins.

**Operator face.** ``opcua_server.operator.OperatorServer`` at ``operator_endpoint``, secured by
``operator_security``, every action journalled in ``audit_path`` (default ``out_dir/audit.jsonl``,
else ``audit.jsonl``) and applied here between ticks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controllers.loop import ControlLoop, TickResult, every_loop
from opcua_server.audit import AUDIT_FILE, AuditJournal
from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT, OperatorServer
from opcua_server.server_security import server_security_from_env
from twin.signals import Snapshot, WriteResult

from .live_runner import LiveRunner
from .secrets import private_dir, redact_url, write_private_text

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 10.0  # the recorder's flush at the end; the service stop timeouts sit above it
LINK_CLOSE_TIMEOUT_S = 5.0


@dataclass
class LiveResult:
    ticks: int
    stats: dict
    refused: list[tuple[float, str, float, str]]  # (t, tag, value, reason): every refused write
    last: TickResult | None
    out_dir: Path | None
    summary_path: Path | None = None
    bridge: dict = field(default_factory=dict)
    denied: list[tuple[float, str, float, str]] = field(default_factory=list)
    plcs: dict = field(default_factory=dict)
    historian: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def plant_time(snapshot: Snapshot) -> float:
    """The newest source timestamp of the snapshot."""
    return max((s.source_time for s in snapshot.values() if math.isfinite(s.source_time)), default=-math.inf)


def plant_plcs(config, plcs: str | Mapping[str, str] | None) -> list:
    """(PlcConfig, tags) per PLC the run talks to; ValueError naming the config's PLCs for an
    unknown override."""
    from pilot_config.plcs import PlcConfig

    if isinstance(plcs, str):
        return [(PlcConfig(name="plc", endpoint=plcs, namespace_uri=config.opcua.namespace_uri), list(config.tags))]
    resolved, tags = config.opcua.resolved_plcs(), config.plc_tags()
    overrides = dict(plcs or {})
    unknown = sorted(set(overrides) - {p.name for p in resolved})
    if unknown:
        raise ValueError(f"no PLC named {', '.join(unknown)} in the config; its PLCs: "
                         f"{', '.join(p.name for p in resolved)}")
    return [(p.model_copy(update={"endpoint": overrides[p.name]}) if p.name in overrides else p, tags[p.name])
            for p in resolved]


def _recorders(recorder, out_dir: Path | None):
    """(recorder, whether we own it, Grafana annotation recorder or None), from the environment:
    InfluxDB when PILOT_INFLUX_URL is set, else the embedded store in ``out_dir`` (or none);
    alarm annotations when PILOT_GRAFANA_URL and PILOT_GRAFANA_TOKEN are set."""
    from .historian.annotations import GrafanaAnnotations
    from .historian.recorder import Recorder
    from .historian.settings import HistorianSettings, make_recorder

    grafana = GrafanaAnnotations.from_env()
    annotations = Recorder(grafana, None, batch_size=100, flush_interval_s=1.0).start() if grafana else None
    if recorder is not None:
        return recorder, False, annotations
    settings = HistorianSettings.from_env()
    if not settings.uses_influx and out_dir is None:
        return None, False, annotations
    if out_dir is not None:
        private_dir(out_dir)
    return make_recorder(settings, out_dir).start(), True, annotations


def _install_signals(stop: asyncio.Event, stopped_by: list[str]) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (the run ends after the tick in progress); returns the undo."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        def handler(sig=sig) -> None:
            if not stop.is_set():
                log.warning("%s: stopping after the tick in progress", sig.name)
                stopped_by.append(sig.name)
            stop.set()
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    return lambda: [loop.remove_signal_handler(s) for s in installed]


async def run_live(config, plcs: str | Mapping[str, str] | None = None, *, mode: str = "advisory",
                   duration_s: float | None = None, out_dir: Path | None = None, session: str = "live",
                   target: str = "live", operator_endpoint: str | None = DEFAULT_OPERATOR_ENDPOINT, recorder=None,
                   poll_s: float = 0.1, stop: asyncio.Event | None = None,
                   on_tick: Callable[[TickResult, WriteResult | None], None] | None = None,
                   bridge_options: dict | None = None, operator_security=None, audit_path: Path | None = None,
                   handle_signals: bool = False, flush_timeout_s: float = FLUSH_TIMEOUT_S,
                   status_every_s: float = 60.0, alarm_state: Path | None = None, **loop_options) -> LiveResult:
    """Run the loop against the line's PLCs for ``duration_s`` of plant time (None: until ``stop``
    is set). ``recorder``: a started ``Recorder`` (None: from the environment, the embedded store
    in ``out_dir``; closed at the end). ``bridge_options``: for every PLC's session (``security``:
    the ``ClientSecurity``). ``operator_security``: a ``ServerSecurity`` for the operator server
    (None: ``secure`` with the users and PKI of the environment). ``alarm_state``: the alarm state
    store, restored at start and saved at each transition (None: $PILOT_ALARM_STATE, else
    ``out_dir/alarms.sqlite``, else none)."""
    from opcua_server.client_security import ClientSecurity
    from opcua_server.identity import decide_target
    from opcua_server.plant_link import PlantLink

    links_of = plant_plcs(config, plcs)
    options = dict(bridge_options or {})
    security = options.pop("security", None) or ClientSecurity()
    if target == "auto":  # from what the servers say they are, never from a flag
        target = await decide_target([p.endpoint for p, _ in links_of], security, session)
    loop = ControlLoop(config, target=target, session=session, modes=every_loop(config, mode),
                       plcs={p.name: _alarm_unit(p, tags) for p, tags in links_of}, **loop_options)
    alarm_store = _alarm_store(loop, alarm_state, out_dir)  # before anything starts: a bad file stops here
    recorder, own_recorder, annotations = _recorders(recorder, out_dir)
    stop, stopped_by = stop or asyncio.Event(), []
    runner = LiveRunner(loop, links_of, recorder, annotations, {t.name: t.plant_unit for t in config.tags},
                        on_tick=on_tick, status_every_s=status_every_s)
    runner.alarm_store = alarm_store
    link = runner.link = PlantLink(links_of, security, listener=runner.on_sample, on_link=runner.on_link, **options)
    operator = audit = None
    undo = _install_signals(stop, stopped_by) if handle_signals else (lambda: None)
    try:
        if operator_endpoint:
            audit = AuditJournal(audit_path or (out_dir or Path()) / AUDIT_FILE,
                                 recorder.record_many if recorder is not None else None)
            operator = runner.operator = await _operator_server(loop, operator_endpoint, operator_security, audit,
                                                                runner)
        await link.start()
        stopped_by.append(await runner.run(stop, poll_s, duration_s) or "")
    finally:
        undo()
        if runner.alarm_store is not None:  # with the operator actions since the last tick
            runner.save_alarms(loop.alarms.pending())
            runner.alarm_store.close()
        runner.final_links = link.links()  # as they were at the end, not after closing
        await _close(operator, audit, link)
        loop.close()  # the slow estimator jobs: cancelled or joined
        if own_recorder:
            recorder.close(timeout_s=flush_timeout_s)
        if annotations is not None:
            annotations.close()
    summary = _summary(runner, loop, links_of, plcs, session, target, stopped_by)
    path = None
    if out_dir is not None:
        path = write_private_text(private_dir(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str))
    return LiveResult(runner.stats.ticks, summary["control"], runner.refused_log, runner.last, out_dir, path,
                      summary["bridge"], runner.denied_log, summary["plcs"], summary["historian"], summary)


def _alarm_store(loop: ControlLoop, path: Path | None, out_dir: Path | None):
    """The alarm state store (restored into the loop's alarms), or None when there is no place for it."""
    import os

    from .alarm_store import ALARM_STATE_ENV, ALARM_STATE_FILE, AlarmStore, restore_into

    path = path or (Path(os.environ[ALARM_STATE_ENV]) if os.environ.get(ALARM_STATE_ENV) else None)
    if path is None and out_dir is None:
        return None
    store = AlarmStore(path or private_dir(out_dir) / ALARM_STATE_FILE)
    restore_into(loop.alarms, store)
    return store


def _alarm_unit(plc, tags) -> str:
    """The plant unit a PLC's comm-loss alarm belongs to: its first unit, else its first tag's."""
    units = list(getattr(plc, "units", None) or [])
    return units[0] if units else (tags[0].plant_unit if tags else "plc")


async def _operator_server(loop: ControlLoop, endpoint: str, security, audit: AuditJournal,
                           runner: LiveRunner) -> OperatorServer:
    """The started operator server; ``security`` None: every secure endpoint, with the users and
    the PKI of the environment."""
    server = OperatorServer(loop, endpoint, security or server_security_from_env(spec="secure"), audit,
                            links=runner.links_json, historian=runner.historian_counters,
                            whatif=_whatif_service(loop, runner))
    await server.start()
    return server


def _whatif_service(loop: ControlLoop, runner: LiveRunner):
    """What-if runs from the loop's latest tick (``pilot whatif``), in a worker process."""
    from .whatif import WhatIfService

    async def state():
        return runner.last, (await runner.link.read()) if runner.last is not None else {}, loop.modes
    return WhatIfService(loop.config, state)


async def _close(operator, audit, link) -> None:
    if operator:
        await operator.stop()
        if operator.whatif is not None:
            operator.whatif.close()
    if audit is not None:
        audit.close()
    try:
        await asyncio.wait_for(link.close(), LINK_CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("the PLC sessions did not close within %.0f s", LINK_CLOSE_TIMEOUT_S)


def _summary(runner: LiveRunner, loop: ControlLoop, links_of, plcs, session: str, target: str,
             stopped_by: list[str]) -> dict:
    t_end = runner.last.t if runner.last else 0.0
    statuses = runner.final_links or runner.link.links()
    endpoints = {p.name: redact_url(p.endpoint) for p, _ in links_of}
    per_plc = {name: {"endpoint": endpoints.get(name, ""), **dataclasses.asdict(st),
                      "clock_steps": [dataclasses.asdict(s) for s in runner.clock.steps if name in s.plc.split("+")]}
               for name, st in statuses.items()}
    reconnects = sum(st.reconnects for st in statuses.values())
    return {"plc": redact_url(plcs) if isinstance(plcs, str) else endpoints, "session": session, "target": target,
            "control": runner.stats.summary(loop, t_end),
            "refused_writes": [{"t": t, "tag": tag, "value": v, "reason": r} for t, tag, v, r in runner.refused_log],
            "denied_writes": [{"t": t, "tag": tag, "value": v, "reason": r} for t, tag, v, r in runner.denied_log],
            "plcs": per_plc, "historian": runner.historian_counters(),
            "bridge": {"reconnects": reconnects, "watchdog_writes": runner.kicks,
                       "watchdog_writes_accepted": runner.kicks_ok},
            "stopped_by": next((s for s in stopped_by if s), "stop"), "wall_clock_end": time.time()}
