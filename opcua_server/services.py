"""What the bridge asks of an OPC UA server and how it decodes the answers: the operation
limits it reads, the writes it sends (checked against the tag's range and access first, read
back after), one subscription per sampling interval, one monitored item per tag (its own
sampling interval, queue size and absolute deadband, ``StatusValue`` trigger), and the
notifications decoded straight from each PublishResponse into ``Sample``s (value in engineering
units, quality from the StatusCode severity, the StatusCode itself, ``source_time`` =
SourceTimestamp in Unix seconds) without a task or Node object per change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from asyncua import ua
from asyncua.common.subscription import Subscription

from twin.signals import Quality, Sample

from .tagmap import TagEntry, from_variant_value

WATCHDOG_NODE = "Diagnostics.ClientWatchdog"

LIMIT_NODES = {
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


def subscription_params(interval_ms: float) -> ua.CreateSubscriptionParameters:
    """Publishing interval = the items' sampling interval; lifetime ~30 s, keep-alive ~3 s."""
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval_ms, RequestedLifetimeCount=max(30, int(30_000 / interval_ms)),
        RequestedMaxKeepAliveCount=max(3, int(3_000 / interval_ms)), MaxNotificationsPerPublish=0,
        PublishingEnabled=True, Priority=0)


def item_request(e: TagEntry, handle: int, ns: int) -> ua.MonitoredItemCreateRequest:
    deadband = e.tag.opcua.deadband_abs if e.tag.opcua.data_type in ("Float", "Double") else 0.0
    flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue,
                              DeadbandType=ua.DeadbandType.Absolute if deadband > 0 else ua.DeadbandType.None_,
                              DeadbandValue=deadband)
    mparams = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=float(e.tag.opcua.sampling_interval_ms),
                                      Filter=flt, QueueSize=e.tag.opcua.queue_size, DiscardOldest=True)
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=e.node_id(ns), AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mparams)


class FastSubscription(Subscription):
    """Hands each PublishResponse's notifications to ``sink`` in one call, status changes to
    ``on_status``."""

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


def precheck(e: TagEntry | None, value: float) -> str | None:
    """Why ``value`` cannot be written to the tag (None: it may be sent)."""
    if e is None:
        return "unknown tag"
    if e.role is None:
        return f"read-only ({e.tag.kind})"
    if not math.isfinite(value) or not (e.tag.low <= value <= e.tag.high):
        return f"out of range: {value} not in [{e.tag.low}, {e.tag.high}] {e.tag.unit}"
    return None


def write_value(e: TagEntry, value: float, ns: int) -> ua.WriteValue:
    """The value only, no timestamps (the PLC stamps it)."""
    return ua.WriteValue(NodeId=e.node_id(ns), AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(e.variant(value)))


def watchdog_value(counter: int, ns: int, node: str = WATCHDOG_NODE) -> ua.WriteValue:
    return ua.WriteValue(NodeId=ua.NodeId(node, ns), AttributeId=ua.AttributeIds.Value,
                         Value=ua.DataValue(ua.Variant(int(counter) & 0xFFFFFFFF, ua.VariantType.UInt32)))


def holds_written(e: TagEntry, wrote: float, back: Sample) -> tuple[bool, float]:
    """Whether the read-back holds what was written (as the tag's variant type carries it), and that value."""
    expect = from_variant_value(e.variant(wrote).Value)
    tol = (1e-6 if e.tag.opcua.data_type == "Double" else 1e-5) * max(1.0, abs(expect))
    return back.quality == Quality.BAD or abs(back.value - expect) <= tol, expect
