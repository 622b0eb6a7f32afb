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

**Operator face.** An OPC UA server on 127.0.0.1 (``operator_endpoint``, default
``opc.tcp://127.0.0.1:4841``; loopback only, no security: it is for consoles on the same host) with
object ``Operator`` in namespace ``urn:pilot-line:operator``: methods ``Acknowledge(alarm_id,
operator)``, ``AcknowledgeAll(operator)``, ``Shelve(alarm_id, operator, duration_s)``,
``Unshelve(alarm_id, operator)``, ``SetMode(loop, mode)`` (each returns a one-line result), ``List()``
(JSON of the alarm summary), and variables ``Alarms`` (the same JSON), ``Modes`` and one Double per
published estimate (``CELL1.CE.EST``, ``SX.KEX.EST``, ...). ``pilot alarms ack|shelve|unshelve|list``
calls these methods.
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
from urllib.parse import urlparse

from asyncua import Server, ua, uamethod

from controllers.loop import ControlLoop, TickResult, every_loop
from twin.points import FreshSamples, process_points
from twin.signals import Snapshot, WriteResult

from .closed_loop import LoopStats
from .historian.base import Point

log = logging.getLogger(__name__)
OPERATOR_NS = "urn:pilot-line:operator"
DEFAULT_OPERATOR_ENDPOINT = "opc.tcp://127.0.0.1:4841"


@dataclass
class LiveResult:
    ticks: int
    stats: dict
    refused: list[tuple[float, str, float, str]]  # (t, tag, value, reason): every refused write
    last: TickResult | None
    out_dir: Path | None
    summary_path: Path | None = None
    bridge: dict = field(default_factory=dict)


def alarms_json(loop: ControlLoop) -> str:
    return json.dumps([{"id": a.alarm_id, "state": a.state.value, "priority": int(a.priority), "tag": a.tag,
                        "value": a.value if math.isfinite(a.value) else None, "since": a.since,
                        "position": a.position} for a in loop.alarms.active()])


class OperatorServer:
    """Acknowledge / shelve / modes over OPC UA methods, and the loop's estimates as variables."""

    def __init__(self, loop: ControlLoop, endpoint: str = DEFAULT_OPERATOR_ENDPOINT):
        host = urlparse(endpoint).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the operator server listens on the loopback only; got {endpoint}")
        self.loop, self.endpoint = loop, endpoint
        self.server = Server()
        self.t = 0.0  # plant time of the last tick: operator actions are journalled at it
        self._vars: dict[str, object] = {}

    async def start(self) -> None:
        s = self.server
        await s.init()
        s.set_endpoint(self.endpoint)
        s.set_server_name("pilot-line operator")
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await s.register_namespace(OPERATOR_NS)
        self.obj = obj = await s.nodes.objects.add_object(idx, "Operator")
        S, D = ua.VariantType.String, ua.VariantType.Double
        for name, fn, args in (("Acknowledge", self._ack, [S, S]), ("AcknowledgeAll", self._ack_all, [S]),
                               ("Shelve", self._shelve, [S, S, D]), ("Unshelve", self._unshelve, [S, S]),
                               ("SetMode", self._set_mode, [S, S]), ("List", self._list, [])):
            await obj.add_method(ua.NodeId(f"Operator.{name}", idx), ua.QualifiedName(name, idx), fn, args, [S])
        self._alarms = await obj.add_variable(ua.NodeId("Operator.Alarms", idx), ua.QualifiedName("Alarms", idx),
                                              "[]", ua.VariantType.String)
        self._modes = await obj.add_variable(ua.NodeId("Operator.Modes", idx), ua.QualifiedName("Modes", idx),
                                             json.dumps(self.loop.modes), ua.VariantType.String)
        self.idx = idx
        await s.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def publish(self, tick: TickResult) -> None:
        self.t = tick.t
        for name, v in tick.published.items():
            node = self._vars.get(name)
            if node is None:
                node = self._vars[name] = await self.obj.add_variable(
                    ua.NodeId(name, self.idx), ua.QualifiedName(name, self.idx), float(v), ua.VariantType.Double)
            await node.write_value(float(v), ua.VariantType.Double)
        await self._alarms.write_value(alarms_json(self.loop), ua.VariantType.String)
        await self._modes.write_value(json.dumps(self.loop.modes), ua.VariantType.String)

    def _do(self, what: Callable[[], object]) -> str:
        try:
            done = what()
        except (KeyError, ValueError) as exc:
            return f"error: {exc.args[0] if exc.args else exc}"
        return f"ok: {len(done)} transition(s)" if isinstance(done, list) else "ok"

    @uamethod
    def _ack(self, parent, alarm_id: str, operator: str) -> str:
        return self._do(lambda: self.loop.alarms.acknowledge(alarm_id, operator, self.t))

    @uamethod
    def _ack_all(self, parent, operator: str) -> str:
        return self._do(lambda: self.loop.alarms.acknowledge_all(operator, self.t))

    @uamethod
    def _shelve(self, parent, alarm_id: str, operator: str, duration_s: float) -> str:
        return self._do(lambda: self.loop.alarms.shelve(alarm_id, operator, self.t, duration_s))

    @uamethod
    def _unshelve(self, parent, alarm_id: str, operator: str) -> str:
        return self._do(lambda: self.loop.alarms.unshelve(alarm_id, operator, self.t))

    @uamethod
    def _set_mode(self, parent, loop: str, mode: str) -> str:
        return self._do(lambda: self.loop.set_mode(loop, mode))

    @uamethod
    def _list(self, parent) -> str:
        return alarms_json(self.loop)


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
        out_dir.mkdir(parents=True, exist_ok=True)
    return make_recorder(settings, out_dir).start(), True, annotations


WATCHDOG_KICK_S = 1.0  # wall seconds between writes of the PLC's client watchdog (it expires after 10 s)


async def run_live(config, url: str, *, mode: str = "advisory", duration_s: float | None = None,
                   out_dir: Path | None = None, session: str = "live", target: str = "live",
                   operator_endpoint: str | None = DEFAULT_OPERATOR_ENDPOINT, recorder=None,
                   poll_s: float = 0.1, stop: asyncio.Event | None = None,
                   on_tick: Callable[[TickResult, WriteResult | None], None] | None = None,
                   bridge_options: dict | None = None, **loop_options) -> LiveResult:
    """Run the loop against the OPC UA server at ``url`` for ``duration_s`` of plant time (None:
    until ``stop`` is set). ``recorder``: a started ``Recorder`` (None: from the environment, the
    embedded store in ``out_dir``; closed at the end)."""
    from opcua_server.bridge import OpcUaBridge

    loop = ControlLoop(config, target=target, session=session, modes=every_loop(config, mode), **loop_options)
    recorder, own_recorder, annotations = _recorders(recorder, out_dir)
    units = {t.name: t.plant_unit for t in config.tags}
    stats, refused_log = LoopStats(), []
    fresh, stop = FreshSamples(), stop or asyncio.Event()
    operator = OperatorServer(loop, operator_endpoint) if operator_endpoint else None
    last: TickResult | None = None
    bridge = OpcUaBridge(url, config.tags, config.opcua.namespace_uri, **(bridge_options or {}))
    try:
        if operator:
            await operator.start()
        async with bridge:
            t_start, next_t = None, -math.inf
            last_kick, kicks, kicks_ok = -math.inf, 0, 0
            while not stop.is_set():
                await asyncio.sleep(poll_s)
                if not bridge.connected:
                    continue
                snap = await bridge.read()
                if time.monotonic() - last_kick >= WATCHDOG_KICK_S:  # the PLC sees the supervisor alive
                    last_kick, kicks = time.monotonic(), kicks + 1
                    kicks_ok += await bridge.kick_watchdog(kicks)
                if recorder is not None:  # every new sample, not only those of control ticks
                    recorder.record_many(process_points(fresh(snap), units, loop.session))
                t = plant_time(snap)
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
        path = out_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2, default=str))
    return LiveResult(stats.ticks, summary["control"], refused_log, last, out_dir, path, summary["bridge"])
