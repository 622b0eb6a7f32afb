"""``pilot run``: the control loop live against PLCs (or ``pilot plc-sim``) over OPC UA.

    OpcUaBridge.read() ─▶ ControlLoop.step(snapshot, t) ─▶ OpcUaBridge.write(writes) ─▶ refused?
          │                        │ points                        (logged, counted, recorded,
          ▼                        ▼                                 rate limit restarted)
     process points ──────▶ recorder (embedded store in --out, or InfluxDB from PILOT_INFLUX_*)

**Clock.** The loop runs on the PLC's clock: t = the newest source timestamp in the snapshot
(Unix seconds). It ticks when t has advanced by ``control_period_s`` since the last tick, polling
the bridge's cache every ``poll_s`` of wall time, so it follows a simulated PLC running at
``--speed`` × real time as well as a real one. While the link is down no tick runs (the bridge
marks every tag BAD; the PLC keeps its last values and its own watchdog logic).

**Session rule.** ``run_live`` builds the ``ControlLoop`` (and so its ``Guard``) *before*
connecting: a training or standalone session with a live target raises ``LiveWriteForbidden``.

**Operator face.** ``opcua_server.operator.OperatorServer`` at ``operator_endpoint`` (default
``opc.tcp://127.0.0.1:4841``), secured by ``operator_security`` (default: every secure endpoint,
the users and the PKI from the environment), every action journalled in ``audit_path`` (default
``out_dir/audit.jsonl``, else ``audit.jsonl``) and recorded as ``audit`` points. Operator requests
are queued by the server and applied here, at the start of each poll iteration, between ticks:
nothing the operator does runs concurrently with ``ControlLoop.step``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controllers.loop import ControlLoop, TickResult, every_loop
from opcua_server.audit import AUDIT_FILE, AuditJournal
from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT, OperatorServer
from opcua_server.server_security import server_security_from_env
from twin.points import FreshSamples, process_points
from twin.signals import Snapshot, WriteResult

from .closed_loop import LoopStats
from .historian.base import Point
from .secrets import private_dir, write_private_text

log = logging.getLogger(__name__)


@dataclass
class LiveResult:
    ticks: int
    stats: dict
    refused: list[tuple[float, str, float, str]]  # (t, tag, value, reason): every refused write
    last: TickResult | None
    out_dir: Path | None
    summary_path: Path | None = None
    bridge: dict = field(default_factory=dict)


def plant_time(snapshot: Snapshot) -> float:
    """The PLC's clock: the newest source timestamp of the snapshot."""
    return max((s.source_time for s in snapshot.values() if math.isfinite(s.source_time)), default=-math.inf)


def refused_points(t: float, writes: dict[str, float], result: WriteResult, units: dict[str, str],
                   session: str = "") -> list[Point]:
    """``<TAG>.REFUSED`` decision points: the value the PLC did not take (one per refused write)."""
    return [Point("decision", f"{tag}.REFUSED", units.get(tag, ""), float(writes.get(tag, math.nan)), t,
                  "bad", session) for tag in result.refused]


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


async def _operator_server(loop: ControlLoop, endpoint: str, security, audit: AuditJournal) -> OperatorServer:
    """The started operator server; ``security`` None: every secure endpoint, with the users and
    the PKI of the environment."""
    server = OperatorServer(loop, endpoint, security or server_security_from_env(spec="secure"), audit)
    await server.start()
    return server


WATCHDOG_KICK_S = 1.0  # wall seconds between writes of the PLC's client watchdog (it expires after 10 s)


async def run_live(config, url: str, *, mode: str = "advisory", duration_s: float | None = None,
                   out_dir: Path | None = None, session: str = "live", target: str = "live",
                   operator_endpoint: str | None = DEFAULT_OPERATOR_ENDPOINT, recorder=None,
                   poll_s: float = 0.1, stop: asyncio.Event | None = None,
                   on_tick: Callable[[TickResult, WriteResult | None], None] | None = None,
                   bridge_options: dict | None = None, operator_security=None, audit_path: Path | None = None,
                   **loop_options) -> LiveResult:
    """Run the loop against the OPC UA server at ``url`` for ``duration_s`` of plant time (None:
    until ``stop`` is set). ``recorder``: a started ``Recorder`` (None: from the environment, the
    embedded store in ``out_dir``; closed at the end). ``operator_security``: a ``ServerSecurity``
    for the operator server (None: ``secure`` with the users and PKI of the environment);
    ``audit_path``: its journal (None: ``out_dir/audit.jsonl``, else ``audit.jsonl``)."""
    from opcua_server.bridge import OpcUaBridge

    loop = ControlLoop(config, target=target, session=session, modes=every_loop(config, mode), **loop_options)
    recorder, own_recorder, annotations = _recorders(recorder, out_dir)
    units = {t.name: t.plant_unit for t in config.tags}
    stats, refused_log = LoopStats(), []
    fresh, stop = FreshSamples(), stop or asyncio.Event()
    last: TickResult | None = None
    bridge = OpcUaBridge(url, config.tags, config.opcua.namespace_uri, **(bridge_options or {}))
    operator = audit = None
    try:
        if operator_endpoint:
            audit = AuditJournal(audit_path or (out_dir or Path()) / AUDIT_FILE,
                                 recorder.record_many if recorder is not None else None)
            operator = await _operator_server(loop, operator_endpoint, operator_security, audit)
        async with bridge:
            t_start, next_t, t_seen = None, -math.inf, None
            last_kick, kicks, kicks_ok = -math.inf, 0, 0
            while not stop.is_set():
                await asyncio.sleep(poll_s)
                if operator:  # operator actions: here, between ticks, on this thread
                    operator.drain(t_seen)
                if not bridge.connected:
                    continue
                snap = await bridge.read()
                if time.monotonic() - last_kick >= WATCHDOG_KICK_S:  # the PLC sees the supervisor alive
                    last_kick, kicks = time.monotonic(), kicks + 1
                    kicks_ok += await bridge.kick_watchdog(kicks)
                if recorder is not None:  # every new sample, not only those of control ticks
                    recorder.record_many(process_points(fresh(snap), units, loop.session))
                t = t_seen = plant_time(snap)
                if not math.isfinite(t) or t < next_t:
                    continue
                t_start = t if t_start is None else t_start
                if duration_s is not None and t - t_start > duration_s + 1e-6:
                    break
                next_t = t + loop.period
                last, result = loop.step(snap, t), None
                points = list(last.points)
                if last.writes:
                    result = await bridge.write(last.writes)
                    if result.refused:
                        loop.refused(result)
                        for tag, reason in result.refused.items():
                            refused_log.append((t, tag, last.writes[tag], reason))
                            log.warning("write %s = %g refused: %s", tag, last.writes[tag], reason)
                        points += refused_points(t, dict(last.writes), result, units, loop.session)
                stats.add(last, result)
                if recorder is not None:
                    recorder.record_many(points)
                if annotations is not None:
                    annotations.record_many([p for p in points if p.measurement == "alarm"])
                if operator:
                    await operator.publish(last)
                if on_tick:
                    on_tick(last, result)
    finally:
        if operator:
            await operator.stop()
        if audit is not None:
            audit.close()
        if own_recorder:
            recorder.close()
        if annotations is not None:
            annotations.close()
    t_end = last.t if last else 0.0
    summary = {"plc": url, "session": session, "target": target, "control": stats.summary(loop, t_end),
               "refused_writes": [{"t": t, "tag": tag, "value": v, "reason": r} for t, tag, v, r in refused_log],
               "bridge": {"reconnects": bridge.stats.reconnects, "watchdog_writes": kicks,
                          "watchdog_writes_accepted": kicks_ok},
               "wall_clock_end": time.time()}
    path = None
    if out_dir is not None:
        path = write_private_text(private_dir(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str))
    return LiveResult(stats.ticks, summary["control"], refused_log, last, out_dir, path, summary["bridge"])
