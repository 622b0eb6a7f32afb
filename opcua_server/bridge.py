"""The bridge: an OPC UA client that is a ``PlantIO`` for the control loop, against real PLCs or
the twin's simulated PLC alike.

- Nodes by namespace URI (the index is looked up at every connect), variant type per tag.
- Every tag is subscribed with its own sampling interval, queue size and absolute deadband, one
  subscription per sampling interval, notifications decoded in bulk (``services``).
- Reads, writes and monitored-item creation are split into batches no larger than the server's
  OperationLimits (MaxNodesPerRead / MaxNodesPerWrite / MaxMonitoredItemsPerCall).
- ``write`` sends one batched Write (values only, no timestamps), then reads the tags back.
- Link loss (socket closed, watchdog probe failing, subscription status change): every tag gets a
  BAD sample (NaN, BadCommunicationError) at the loss and again when back, before the first fresh
  value (a historian holds a point at each end of the gap), both on the PLC's clock
  (``link_state.PlcClock``); a read while down answers BadNotConnected, never a frozen value. One
  WARNING down (with the reason), "still down" at growing intervals (``still_down_s``), one INFO
  back. Reconnects with exponential backoff (``backoff_s``: first delay, cap) and re-creates every
  subscription; ``stats.reconnects`` counts the returns (a loop that sees it change re-reads).
  ``on_link(plc, up, t)``: the initial state at start, then every transition, ``t`` that of the
  marks (at a return: before the fresh values re-base the clock estimate). Unreachable at
  start: raised, or with ``start(allow_down=True)`` down and retrying.
- A write while down is refused ("connection down"), one whose link drops in flight "outcome
  unknown" (never resent), one the PLC refuses names the status ("refused by the PLC: BadUserAccessDenied").
- Security: every connect and reconnect goes through ``client_security.connect_client`` with the
  bridge's ``ClientSecurity`` (endpoint choice, server certificate check, user). A refusal is a
  ``SecurityError`` at ``start()``; while reconnecting it is logged once (WARNING) and retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from asyncua import Client, ua

from pilot_config.tags import Tag
from twin.signals import Quality, Sample, Snapshot, WriteResult

from . import link_state, services
from .client_security import ClientSecurity, connect_client
from .link_state import LinkDown, LinkStatus, PlcClock, StillDown
from .security import SecurityError
from .services import WATCHDOG_NODE, chunks, sample_of
from .tagmap import TagEntry, TagMap

log = logging.getLogger(__name__)

SampleListener = Callable[[str, Sample], None]
LinkListener = Callable[[str, bool, float], None]  # (plc, up, t on the PLC's clock)


@dataclass
class BridgeStats:
    changes: int = 0
    reconnects: int = 0
    refusals: int = 0  # reconnect attempts refused by security (certificate, user)
    outages: list[tuple[float, float | None]] = field(default_factory=list)  # wall seconds (down, up)
    last_error: str = ""


class OpcUaBridge:
    """PlantIO over OPC UA. Use ``async with OpcUaBridge(...)`` or ``start()`` / ``close()``."""

    def __init__(self, url: str, tags: Iterable[Tag], namespace_uri: str, *,
                 security: ClientSecurity | None = None, timeout_s: float = 4.0, watchdog_s: float = 0.5,
                 backoff_s: tuple[float, float] = (0.2, 1.0), listener: SampleListener | None = None,
                 name: str = "pilot-line bridge", plc: str = "", on_link: LinkListener | None = None,
                 still_down_s: Sequence[float] = link_state.STILL_DOWN_S,
                 still_down_every_s: float = link_state.STILL_DOWN_EVERY_S):
        self.url = url
        self.plc = plc or url
        self.tagmap = TagMap(tags, namespace_uri)
        self.security = security if security is not None else ClientSecurity()
        self.timeout_s, self.watchdog_s, self.backoff_s = timeout_s, watchdog_s, backoff_s
        self.listeners: list[SampleListener] = [listener] if listener else []
        self.on_link = on_link
        self.name = name
        self.stats = BridgeStats()
        self._still_down = (tuple(still_down_s), still_down_every_s)
        StillDown(*self._still_down)  # construct valid or fail
        self._entries: list[TagEntry] = list(self.tagmap)
        self._cache: dict[str, Sample] = {}
        self._client: Client | None = None
        self._ns = 0
        self._limits = {k: services.DEFAULT_BATCH for k in services.LIMIT_NODES}
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self.monitored = 0
        self.clock = PlcClock()
        self._since = time.time()
        self._down: tuple[float, float] | None = None  # (wall, monotonic) start of the outage
        self._loss_reason = ""
        self._rebase = False  # the next notification is the first of a new session
        self._up_pending = False  # the BAD samples that close a gap are still to be given
        self._reopened = False  # they were given, and fresh values may have followed
        self._live = False  # the current session's notifications are taken
        self._t_up = 0.0  # when the last gap closed (PLC-clock estimate)
        self._publishers: list[asyncio.Task] = []  # extra publish loops of the current session

    @property
    def label(self) -> str:
        return f"PLC {self.plc}" if self.plc == self.url else f"PLC {self.plc} ({self.url})"

    # -- life cycle ----------------------------------------------------------------------
    async def __aenter__(self) -> OpcUaBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def link_status(self) -> LinkStatus:
        return LinkStatus(self.plc, self.connected, self._since, len(self.stats.outages), self.stats.reconnects,
                          self.stats.last_error)

    async def start(self, *, allow_down: bool = False) -> None:
        """Connect and start the supervisor. A ``SecurityError`` is always raised; a network
        error (unreachable, no such namespace) is raised unless ``allow_down``: then the PLC
        starts down (its tags BAD, one WARNING) and the supervisor keeps trying."""
        link_state.install_noise_filter()
        try:
            await self._connect()
        except link_state.NETWORK_ERRORS as exc:
            await self._drop_client()
            if not allow_down:
                raise
            self.stats.last_error = link_state.describe_error(exc)
            self._begin_outage(self.stats.last_error)
        except BaseException:
            await self._drop_client()
            raise
        else:
            self._notify(True, self.clock.now())
        self._supervisor = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._drop_client()

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def _connect(self) -> None:
        client = await connect_client(self.url, self.security, timeout_s=self.timeout_s,
                                      watchdog_s=self.watchdog_s, name=self.name)
        client.connection_lost_callback = self._on_connection_lost
        try:
            self._ns = await client.get_namespace_index(self.tagmap.namespace_uri)
        except ValueError:
            await self._quiet_disconnect(client)
            raise LinkDown(f"{self.url} has no namespace {self.tagmap.namespace_uri!r}") from None
        self._client = client
        await self._read_limits()
        self._rebase, self._up_pending, self._live = True, self._down is not None, True
        await self._subscribe()
        self._start_publish_pipeline(client)
        self._lost.clear()
        self._connected.set()

    def _start_publish_pipeline(self, client: Client) -> None:
        """Keep several PublishRequests in flight on a large session. asyncua's client sends the
        next PublishRequest only after handling the last response: with thousands of items per
        publishing interval the round trip exceeds the interval and the server's per-item queues
        overflow (measured: 3 PLCs x 2,000 tags x 5 Hz lost up to 47,500 changes in 15 s under load,
        none with 3 in flight; benchmarks/bridge_throughput.py). One more request per 1,000
        monitored items, at most 4 in all; each extra loop acknowledges what it receives."""
        extra = min(3, self.monitored // 1000)
        session = client.uaclient.session
        self._publishers = [asyncio.create_task(session._publish_loop()) for _ in range(extra)]

    @staticmethod
    async def _quiet_disconnect(client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except Exception:
            pass

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        self._live = False
        for task in self._publishers:
            task.cancel()
        await asyncio.gather(*self._publishers, return_exceptions=True)
        self._publishers = []
        if client is not None:
            client.connection_lost_callback = None
            await self._quiet_disconnect(client)

    async def _read_limits(self) -> None:
        ids = [ua.NodeId(i) for i in services.LIMIT_NODES.values()]
        try:
            values = await self._client.read_values([self._client.get_node(n) for n in ids])
        except ua.UaError:
            values = [0] * len(ids)
        for key, v in zip(services.LIMIT_NODES, values):
            self._limits[key] = int(v) if isinstance(v, int) and v > 0 else services.DEFAULT_BATCH

    # -- subscriptions -------------------------------------------------------------------
    async def _subscribe(self) -> None:
        groups: dict[float, list[int]] = {}
        for i, e in enumerate(self._entries):
            groups.setdefault(float(e.tag.opcua.sampling_interval_ms), []).append(i)
        created = 0
        for interval, idx in sorted(groups.items()):
            params = services.subscription_params(interval)
            sub = services.FastSubscription(self._client.uaclient.session, params, self._on_items, self._on_status)
            await sub.init()
            for batch in chunks(idx, self._limits["monitor"]):
                items = [services.item_request(self._entries[i], i, self._ns) for i in batch]
                results = await sub.create_monitored_items(items)
                for i, r in zip(batch, results):
                    if isinstance(r, ua.StatusCode):
                        log.warning("cannot monitor %s: %s", self._entries[i].name, r.name)
                    else:
                        created += 1
        self.monitored = created

    def _on_items(self, items: list[ua.MonitoredItemNotification]) -> None:
        if not self._live:
            return  # late news of a session already lost: the cache stays BAD
        now = time.time()
        if self._up_pending:
            self._mark_up()
        entries, cache, listeners = self._entries, self._cache, self.listeners
        latest = -math.inf
        for item in items:
            name = entries[item.ClientHandle].tag.name
            s = sample_of(item.Value, now)
            cache[name] = s
            if s.source_time > latest:
                latest = s.source_time
            for listener in listeners:
                listener(name, s)
        if items:
            self.clock.seen(latest, now, rebase=self._rebase)
            self._rebase = False
        self.stats.changes += len(items)

    def _on_status(self, status: ua.StatusCode) -> None:
        if not status.is_good():
            self._loss_reason = self._loss_reason or f"subscription status {status.name}"
            self._lost.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._loss_reason = self._loss_reason or link_state.describe_error(exc)
        self._lost.set()

    # -- supervision ---------------------------------------------------------------------
    def _mark_bad(self, t: float) -> None:
        for e in self._entries:
            s = Sample(math.nan, t, Quality.BAD, ua.StatusCodes.BadCommunicationError)
            self._cache[e.name] = s
            for listener in self.listeners:
                listener(e.name, s)

    def _mark_up(self) -> None:
        """The BAD samples that close the gap, at the PLC-clock estimate, before any fresh value."""
        self._up_pending, self._reopened, self._t_up = False, True, self.clock.now()
        self._mark_bad(self._t_up)

    def _notify(self, up: bool, t: float) -> None:
        self._since = time.time()
        if self.on_link is not None:
            try:
                self.on_link(self.plc, up, t)
            except Exception:  # a listener's fault must not stop the supervision of the link
                log.exception("link listener failed for %s", self.label)

    def _begin_outage(self, reason: str) -> None:
        t_down = self.clock.now()
        self._connected.clear()
        self._live = False
        self._down = (time.time(), time.monotonic())
        self._mark_bad(t_down)
        self.stats.outages.append((self._down[0], None))
        self._lost.set()
        log.warning("%s down (%s): its %d tags marked BAD, reconnecting", self.label, reason, len(self._entries))
        self._notify(False, t_down)

    def _end_outage(self) -> None:
        if self._up_pending:
            self._mark_up()
        wall0, mono0 = self._down
        self._down, self._loss_reason, self._reopened = None, "", False
        self.stats.reconnects += 1
        self.stats.outages[-1] = (wall0, time.time())
        log.info("%s back after %.1f s; %d items monitored", self.label, time.monotonic() - mono0, self.monitored)
        self._notify(True, self._t_up)  # the time of the closing marks, on the clock the gap was measured by

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            if self._down is None:
                self.stats.last_error = self._loss_reason or "connection lost"
                self._begin_outage(self.stats.last_error)
            await self._drop_client()
            if not await self._reconnect():
                return
            self._end_outage()

    async def _reconnect(self) -> bool:
        """Try until connected (True) or closing (False), logging "still down" on schedule."""
        delay, refusal, still = self.backoff_s[0], None, StillDown(*self._still_down)
        while not self._closing:
            try:
                await self._connect()
                return True
            except link_state.NETWORK_ERRORS as exc:
                self.stats.last_error = link_state.describe_error(exc)
                log.debug("reconnect to %s failed: %s; next try in %.1f s", self.label, self.stats.last_error, delay)
            except SecurityError as exc:
                self.stats.refusals += 1
                self.stats.last_error = str(exc)
                if str(exc) != refusal:  # a security refusal is logged once, not at every try
                    refusal = str(exc)
                    log.warning("reconnect to %s refused: %s", self.label, exc)
            await self._drop_client()
            if self._reopened:  # the failed session gave values: the gap opens again here
                self._reopened = False
                self._mark_bad(self.clock.now())
            elapsed = time.monotonic() - self._down[1]
            if still.due(elapsed):
                log.warning("%s still down for %.*f s (last error: %s)", self.label, 0 if elapsed >= 10 else 1, elapsed,
                            self.stats.last_error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_s[1])
        return False

    # -- PlantIO -------------------------------------------------------------------------
    async def read(self) -> Snapshot:
        """The latest sample of every tag (BAD / NaN while the link is down, BadWaitingForInitialData
        before its first value)."""
        if not self.connected:  # nothing frozen: BadNotConnected, now on the PLC's clock
            down = Sample(math.nan, self.clock.now(), Quality.BAD, ua.StatusCodes.BadNotConnected)
            return {e.name: down for e in self._entries}
        if len(self._cache) < len(self._entries):  # just connected: not every initial value is in
            waiting = Sample(math.nan, self.clock.now(), Quality.BAD, ua.StatusCodes.BadWaitingForInitialData)
            return {e.name: self._cache.get(e.name, waiting) for e in self._entries}
        return dict(self._cache)

    async def read_now(self, names: Iterable[str] | None = None) -> dict[str, Sample]:
        """Read tags with the Read service (batched), bypassing subscriptions; ``LinkDown`` while
        the link is down."""
        entries = [self.tagmap[n] for n in names] if names is not None else self._entries
        client = self._require_client()
        out: dict[str, Sample] = {}
        now = time.time()
        for batch in chunks(entries, self._limits["read"]):
            params = ua.ReadParameters(NodesToRead=[
                ua.ReadValueId(NodeId=e.node_id(self._ns), AttributeId=ua.AttributeIds.Value) for e in batch],
                TimestampsToReturn=ua.TimestampsToReturn.Both)
            for e, dv in zip(batch, await client.uaclient.read(params)):
                out[e.name] = sample_of(dv, now)
        return out

    def _require_client(self) -> Client:
        if not self.connected or self._client is None:
            raise LinkDown(f"OPC UA link to {self.url} is down")
        return self._client

    async def write(self, values: Mapping[str, float]) -> WriteResult:
        refused: dict[str, str] = {}
        todo: list[tuple[TagEntry, float]] = []
        for name, value in values.items():
            reason = services.precheck(self.tagmap.entries.get(name), value)
            if reason:
                refused[name] = reason
            else:
                todo.append((self.tagmap[name], float(value)))
        if not todo:
            return WriteResult((), refused)
        if not self.connected:
            refused.update({e.name: "connection down: not written" for e, _ in todo})
            return WriteResult((), refused)
        accepted = await self._send(todo, refused)
        return WriteResult(tuple(accepted), refused)

    async def kick_watchdog(self, counter: int, node: str = WATCHDOG_NODE) -> bool:
        """Write the supervising client's watchdog counter (UInt32, no timestamps) to the PLC's
        watchdog variable, by string id in the config's namespace. False when the link is down or
        the server refused it (no such variable, role too low); never raises for that."""
        if not self.connected or self._client is None:
            return False
        try:
            params = ua.WriteParameters(NodesToWrite=[services.watchdog_value(counter, self._ns, node)])
            return (await self._client.uaclient.write(params))[0].is_good()
        except Exception:  # a watchdog write must never take the loop down
            return False

    async def _send(self, todo: list[tuple[TagEntry, float]], refused: dict[str, str]) -> list[str]:
        accepted: list[str] = []
        client = self._client
        for batch in chunks(todo, self._limits["write"]):
            nodes = [services.write_value(e, v, self._ns) for e, v in batch]
            try:
                codes = await client.uaclient.write(ua.WriteParameters(NodesToWrite=nodes))
            except (TimeoutError, OSError, ua.UaError, ConnectionError, AttributeError) as exc:
                for e, _ in batch:
                    refused[e.name] = f"link lost during write ({type(exc).__name__}): outcome unknown, not retried"
                continue
            for (e, _), code in zip(batch, codes):
                if code.is_good():
                    accepted.append(e.name)
                else:
                    refused[e.name] = f"refused by the PLC: {code.name}"
        if accepted:
            await self._read_back(accepted, {e.name: v for e, v in todo}, refused)
        return [n for n in accepted if n not in refused]

    async def _read_back(self, names: list[str], wrote: dict[str, float], refused: dict[str, str]) -> None:
        try:
            back = await self.read_now(names)
        except (TimeoutError, OSError, ua.UaError, LinkDown, ConnectionError) as exc:
            log.warning("read-back after write failed: %r", exc)
            return
        for name, s in back.items():
            self._cache[name] = s
            held, expect = services.holds_written(self.tagmap[name], wrote[name], s)
            if not held:
                log.warning("read-back of %s: wrote %g, PLC holds %g", name, expect, s.value)
