"""The bridge: an OPC UA client that is a ``PlantIO`` for the control loop, against real PLCs or
the twin's simulated PLC alike.

- Nodes by namespace URI (the index is looked up at every connect), variant type per tag.
- Every tag is subscribed with its own sampling interval, queue size and absolute deadband;
  one subscription per distinct sampling interval (publishing interval = that interval).
  Notifications are decoded straight from the PublishResponse into ``Sample``s (value in
  engineering units, quality from the StatusCode severity, ``source_time`` = SourceTimestamp in
  Unix seconds) without a task or Node object per change.
- Reads, writes and monitored-item creation are split into batches no larger than the server's
  OperationLimits (MaxNodesPerRead / MaxNodesPerWrite / MaxMonitoredItemsPerCall).
- ``write`` sends one batched Write (values only, no timestamps), then reads the tags back.
- Link loss (socket closed, watchdog probe failing, subscription status change): every tag is
  recorded BAD (value NaN) at the time of loss, one WARNING line is logged; reconnects with
  exponential backoff (``backoff_s``), re-creates every subscription, logs one INFO line when
  back. A write while down is refused ("connection down"); a write whose link drops in flight is
  refused ("outcome unknown") and never resent.
- Security: every connect and reconnect goes through ``client_security.connect_client`` with the
  bridge's ``ClientSecurity`` (endpoint choice, server certificate check, user). A refusal is a
  ``SecurityError`` at ``start()``; while reconnecting it is logged once (WARNING) and retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from asyncua import Client, ua
from asyncua.common.subscription import Subscription

from pilot_config.tags import Tag
from twin.signals import Quality, Sample, Snapshot, WriteResult

from .client_security import ClientSecurity, connect_client
from .security import SecurityError
from .tagmap import TagEntry, TagMap, from_variant_value

log = logging.getLogger(__name__)

SampleListener = Callable[[str, Sample], None]
_LIMIT_NODES = {
    "read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "write": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
    "monitor": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
}
DEFAULT_BATCH = 1000


def quality_of(status: ua.StatusCode | None) -> Quality:
    code = 0 if status is None else status.value
    severity = code >> 30
    return Quality.GOOD if severity == 0 else Quality.UNCERTAIN if severity == 1 else Quality.BAD


def sample_of(dv: ua.DataValue, received: float) -> Sample:
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    value = from_variant_value(dv.Value.Value if dv.Value is not None else None)
    q = quality_of(dv.StatusCode)
    status = 0 if dv.StatusCode is None else dv.StatusCode.value
    return Sample(value if q != Quality.BAD else math.nan, stamp.timestamp() if stamp else received, q, status)


def chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]


class LinkDown(Exception):
    pass


class _LinkNoise(logging.Filter):
    """Drops asyncua's own tracebacks and warnings about a closed connection: the bridge reports a
    link loss itself, with one line down and one line up."""

    PHRASES = ("onnection is closed", "Publish iteration crashed", "was called but connection is closed",
               "Connection lost", "connection_lost")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError)):
            return False
        msg = record.getMessage()
        return not any(p in msg for p in self.PHRASES)


_NOISY = ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
          "asyncua.client.ua_client.UASocketProtocol", "asyncua.client.client")


def _install_noise_filter() -> None:
    for name in _NOISY:
        lg = logging.getLogger(name)
        if not any(isinstance(f, _LinkNoise) for f in lg.filters):
            lg.addFilter(_LinkNoise())


class _FastSubscription(Subscription):
    """Hands each PublishResponse's notifications to the bridge in one call."""

    def __init__(self, session, params, sink, on_status):
        super().__init__(session, params, handler=object())
        self._sink, self._on_status = sink, on_status

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        for notif in publish_result.NotificationMessage.NotificationData or ():
            if isinstance(notif, ua.DataChangeNotification):
                self._sink(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                self._on_status(notif.Status)


@dataclass
class BridgeStats:
    changes: int = 0
    reconnects: int = 0
    refusals: int = 0  # reconnect attempts refused by security (certificate, user)
    outages: list[tuple[float, float | None]] = field(default_factory=list)


class OpcUaBridge:
    """PlantIO over OPC UA. Use ``async with OpcUaBridge(...)`` or ``start()`` / ``close()``."""

    def __init__(self, url: str, tags: Iterable[Tag], namespace_uri: str, *,
                 security: ClientSecurity | None = None, timeout_s: float = 4.0, watchdog_s: float = 0.5,
                 backoff_s: tuple[float, float] = (0.2, 2.0), listener: SampleListener | None = None,
                 name: str = "pilot-line bridge"):
        self.url = url
        self.tagmap = TagMap(tags, namespace_uri)
        self.security = security if security is not None else ClientSecurity()
        self.timeout_s, self.watchdog_s, self.backoff_s = timeout_s, watchdog_s, backoff_s
        self.listeners: list[SampleListener] = [listener] if listener else []
        self.name = name
        self.stats = BridgeStats()
        self._entries: list[TagEntry] = list(self.tagmap)
        self._cache: dict[str, Sample] = {}
        self._client: Client | None = None
        self._ns = 0
        self._limits = {k: DEFAULT_BATCH for k in _LIMIT_NODES}
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self.monitored = 0

    # -- life cycle ----------------------------------------------------------------------
    async def __aenter__(self) -> OpcUaBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect (the first connect must succeed; errors are raised) and start the supervisor."""
        _install_noise_filter()
        await self._connect()
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
        await self._subscribe()
        self._lost.clear()
        self._connected.set()

    @staticmethod
    async def _quiet_disconnect(client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except Exception:
            pass

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            client.connection_lost_callback = None
            await self._quiet_disconnect(client)

    async def _read_limits(self) -> None:
        ids = [ua.NodeId(i) for i in _LIMIT_NODES.values()]
        try:
            values = await self._client.read_values([self._client.get_node(n) for n in ids])
        except ua.UaError:
            values = [0] * len(ids)
        for key, v in zip(_LIMIT_NODES, values):
            self._limits[key] = int(v) if isinstance(v, int) and v > 0 else DEFAULT_BATCH

    # -- subscriptions -------------------------------------------------------------------
    async def _subscribe(self) -> None:
        groups: dict[float, list[int]] = {}
        for i, e in enumerate(self._entries):
            groups.setdefault(float(e.tag.opcua.sampling_interval_ms), []).append(i)
        created = 0
        for interval, idx in sorted(groups.items()):
            params = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=interval, RequestedLifetimeCount=max(30, int(30_000 / interval)),
                RequestedMaxKeepAliveCount=max(3, int(3_000 / interval)), MaxNotificationsPerPublish=0,
                PublishingEnabled=True, Priority=0)
            sub = _FastSubscription(self._client.uaclient.session, params, self._on_items, self._on_status)
            await sub.init()
            for batch in chunks(idx, self._limits["monitor"]):
                results = await sub.create_monitored_items([self._item_request(i) for i in batch])
                for i, r in zip(batch, results):
                    if isinstance(r, ua.StatusCode):
                        log.warning("cannot monitor %s: %s", self._entries[i].name, r.name)
                    else:
                        created += 1
        self.monitored = created

    def _item_request(self, i: int) -> ua.MonitoredItemCreateRequest:
        e = self._entries[i]
        deadband = e.tag.opcua.deadband_abs if e.tag.opcua.data_type in ("Float", "Double") else 0.0
        flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue,
                                  DeadbandType=ua.DeadbandType.Absolute if deadband > 0 else ua.DeadbandType.None_,
                                  DeadbandValue=deadband)
        mparams = ua.MonitoringParameters(ClientHandle=i, SamplingInterval=float(e.tag.opcua.sampling_interval_ms),
                                          Filter=flt, QueueSize=e.tag.opcua.queue_size, DiscardOldest=True)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=e.node_id(self._ns), AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mparams)

    def _on_items(self, items: list[ua.MonitoredItemNotification]) -> None:
        now = time.time()
        entries, cache, listeners = self._entries, self._cache, self.listeners
        for item in items:
            name = entries[item.ClientHandle].tag.name
            s = sample_of(item.Value, now)
            cache[name] = s
            for listener in listeners:
                listener(name, s)
        self.stats.changes += len(items)

    def _on_status(self, status: ua.StatusCode) -> None:
        if not status.is_good():
            self._lost.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lost.set()

    # -- supervision ---------------------------------------------------------------------
    def _mark_bad(self, t: float) -> None:
        for e in self._entries:
            s = Sample(math.nan, t, Quality.BAD, ua.StatusCodes.BadCommunicationError)
            self._cache[e.name] = s
            for listener in self.listeners:
                listener(e.name, s)

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            t_down = time.time()
            self._connected.clear()
            self._mark_bad(t_down)
            self.stats.outages.append((t_down, None))
            log.warning("OPC UA link to %s down; tags marked BAD, reconnecting", self.url)
            await self._drop_client()
            delay, refusal = self.backoff_s[0], None
            while not self._closing:
                try:
                    await self._connect()
                    break
                except (TimeoutError, OSError, ua.UaError, LinkDown, ConnectionError) as exc:
                    log.debug("reconnect to %s failed: %r; next try in %.1f s", self.url, exc, delay)
                except SecurityError as exc:
                    self.stats.refusals += 1
                    if str(exc) != refusal:  # a security refusal is logged once, not at every try
                        refusal = str(exc)
                        log.warning("reconnect to %s refused: %s", self.url, exc)
                await self._drop_client()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_s[1])
            if self._closing:
                return
            self.stats.reconnects += 1
            self.stats.outages[-1] = (t_down, time.time())
            log.info("OPC UA link to %s back after %.1f s; %d items monitored", self.url,
                     time.time() - t_down, self.monitored)

    # -- PlantIO -------------------------------------------------------------------------
    async def read(self) -> Snapshot:
        """The latest sample of every tag (BAD / NaN while the link is down or before data)."""
        if not self.connected:  # the cache was marked BAD at the loss; nothing is frozen
            missing = Sample(math.nan, time.time(), Quality.BAD, ua.StatusCodes.BadNotConnected)
            return {e.name: self._cache.get(e.name, missing) for e in self._entries}
        return dict(self._cache)

    async def read_now(self, names: Iterable[str] | None = None) -> dict[str, Sample]:
        """Read tags with the Read service (batched), bypassing subscriptions."""
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
            reason = self._precheck(name, value)
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

    async def kick_watchdog(self, counter: int, node: str = "Diagnostics.ClientWatchdog") -> bool:
        """Write the supervising client's watchdog counter (UInt32, no timestamps) to the PLC's
        watchdog variable, by string id in the config's namespace. False when the link is down or
        the server refused it (no such variable, role too low); never raises for that."""
        if not self.connected or self._client is None:
            return False
        wv = ua.WriteValue(NodeId=ua.NodeId(node, self._ns), AttributeId=ua.AttributeIds.Value,
                           Value=ua.DataValue(ua.Variant(int(counter) & 0xFFFFFFFF, ua.VariantType.UInt32)))
        try:
            params = ua.WriteParameters(NodesToWrite=[wv])
            return (await self._client.uaclient.write(params))[0].is_good()
        except Exception:  # a watchdog write must never take the loop down
            return False

    def _precheck(self, name: str, value: float) -> str | None:
        e = self.tagmap.entries.get(name)
        if e is None:
            return "unknown tag"
        if e.role is None:
            return f"read-only ({e.tag.kind})"
        if not math.isfinite(value) or not (e.tag.low <= value <= e.tag.high):
            return f"out of range: {value} not in [{e.tag.low}, {e.tag.high}] {e.tag.unit}"
        return None

    async def _send(self, todo: list[tuple[TagEntry, float]], refused: dict[str, str]) -> list[str]:
        accepted: list[str] = []
        client = self._client
        for batch in chunks(todo, self._limits["write"]):
            nodes = [ua.WriteValue(NodeId=e.node_id(self._ns), AttributeId=ua.AttributeIds.Value,
                                   Value=ua.DataValue(e.variant(v))) for e, v in batch]
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
            e = self.tagmap[name]
            expect = from_variant_value(e.variant(wrote[name]).Value)
            tol = 1e-6 * max(1.0, abs(expect)) if e.tag.opcua.data_type == "Double" else 1e-5 * max(1.0, abs(expect))
            if s.quality != Quality.BAD and not abs(s.value - expect) <= tol:
                log.warning("read-back of %s: wrote %g, PLC holds %g", name, expect, s.value)
