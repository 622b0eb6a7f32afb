"""``PlantLink``: the ``PlantIO`` of a line with several PLCs, one ``OpcUaBridge`` (one OPC UA
session) per PLC, each with its own reconnect, subscription restore and link status.

- Every tag lives on exactly one PLC; reads merge the PLCs' snapshots, writes and ``read_now``
  are routed by the tag's PLC (``plc_of``) and run on the PLCs concurrently.
- A PLC that goes down marks only its own tags BAD (``bridge``: a BAD sample with
  BadCommunicationError at the loss and again when back, before the fresh values, stamped on that
  PLC's clock); the other PLCs carry on. A read while down answers BadNotConnected; a write to a
  down PLC is refused ("connection down: not written"); ``read_now`` answers BAD samples for the
  tags of a PLC that is down (BadNotConnected) or lost during the read (BadCommunicationError),
  never an exception for them.
- ``start()``: every PLC is connected concurrently. A PLC that cannot be reached starts down and
  keeps trying; a ``SecurityError`` (untrusted certificate, refused user) of any PLC is raised
  (one sentence per PLC refused) after every session is closed again.
- Security: the ``ClientSecurity`` of the bridge, with the PLC's own pin where it has one
  (``PlcConfig.security_policy`` / ``security_mode`` not ``auto``: that PLC's pair replaces the
  setting's policy and mode; user, password and PKI stay the same).
- ``links()``: a ``LinkStatus`` per PLC; ``on_link(plc, up, t)`` is called once per PLC at start
  with its initial state, then at every transition (``t`` on that PLC's clock, the time of the
  BAD marks of that transition: a PLC whose clock stepped while it was away is re-based by the
  fresh values that follow). ``LinkStatus.reconnects`` grows by one at each return: the loop
  re-reads what it writes there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from asyncua import ua

from pilot_config.tags import Tag
from twin.signals import Quality, Sample, Snapshot, WriteResult

from .bridge import OpcUaBridge, SampleListener
from .client_security import ClientSecurity
from .link_state import NETWORK_ERRORS, LinkStatus, describe_error
from .security import SecurityError

if TYPE_CHECKING:
    from pilot_config.plcs import PlcConfig

log = logging.getLogger(__name__)

_READ_ERRORS = (*NETWORK_ERRORS, AttributeError)  # AttributeError: the client went away mid-read


def security_for(plc: PlcConfig, base: ClientSecurity) -> ClientSecurity:
    """``base`` with the PLC's pinned policy and mode, if it pins either."""
    policy, mode = plc.security_policy, plc.security_mode
    if policy == "auto" and mode == "auto":
        return base
    return dataclasses.replace(base, policy=policy, mode=mode)


def _bad(names: Iterable[str], t: float, status: int) -> dict[str, Sample]:
    s = Sample(math.nan, t, Quality.BAD, status)
    return {n: s for n in names}


class PlantLink:
    """PlantIO over several PLCs. Use ``async with PlantLink(...)`` or ``start()`` / ``close()``."""

    def __init__(self, plcs: Sequence[tuple[PlcConfig, Sequence[Tag]]], security: ClientSecurity, *,
                 listener: SampleListener | None = None, on_link: Callable[[str, bool, float], None] | None = None,
                 **bridge_options):
        if not plcs:
            raise ValueError("PlantLink needs at least one PLC")
        self._bridges: dict[str, OpcUaBridge] = {}
        self._plc_of: dict[str, str] = {}
        for plc, tags in plcs:
            if plc.name in self._bridges:
                raise ValueError(f"PLC {plc.name!r} is listed twice")
            tags = list(tags)
            for tag in tags:
                other = self._plc_of.setdefault(tag.name, plc.name)
                if other != plc.name:
                    raise ValueError(f"tag {tag.name} is on PLC {other!r} and on PLC {plc.name!r}")
            options = {"name": f"pilot-line bridge ({plc.name})", **bridge_options}
            self._bridges[plc.name] = OpcUaBridge(
                plc.endpoint, tags, plc.namespace_uri, security=security_for(plc, security),
                listener=listener, on_link=on_link, plc=plc.name, **options)

    # -- life cycle ----------------------------------------------------------------------
    async def __aenter__(self) -> PlantLink:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        bridges = list(self._bridges.values())
        results = await asyncio.gather(*(b.start(allow_down=True) for b in bridges), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        await self.close()
        refusals = [e for e in errors if isinstance(e, SecurityError)]
        if len(refusals) == len(errors):
            raise SecurityError("; ".join(str(e) for e in refusals))
        raise next(e for e in errors if not isinstance(e, SecurityError))

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._bridges.values()), return_exceptions=True)

    async def wait_connected(self, timeout_s: float, plcs: Iterable[str] | None = None) -> bool:
        """True once every PLC (or every one named) is up, False after ``timeout_s``."""
        names = list(self._bridges) if plcs is None else list(plcs)
        waits = [self.bridge(n).wait_connected(timeout_s) for n in names]
        return all(await asyncio.gather(*waits))

    # -- topology and state --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Every PLC up."""
        return all(b.connected for b in self._bridges.values())

    @property
    def plcs(self) -> tuple[str, ...]:
        return tuple(self._bridges)

    def bridge(self, plc: str) -> OpcUaBridge:
        try:
            return self._bridges[plc]
        except KeyError:
            raise KeyError(f"no PLC {plc!r}: the PLCs are {', '.join(self._bridges)}") from None

    def plc_of(self, tag: str) -> str:
        try:
            return self._plc_of[tag]
        except KeyError:
            raise KeyError(f"no PLC serves tag {tag!r}") from None

    def tags_of(self, plc: str) -> tuple[str, ...]:
        return tuple(e.name for e in self.bridge(plc).tagmap)

    def links(self) -> dict[str, LinkStatus]:
        return {name: b.link_status() for name, b in self._bridges.items()}

    @property
    def monitored(self) -> int:
        return sum(b.monitored for b in self._bridges.values())

    @property
    def changes(self) -> int:
        return sum(b.stats.changes for b in self._bridges.values())

    # -- PlantIO -------------------------------------------------------------------------
    async def read(self) -> Snapshot:
        """The latest sample of every tag; a down PLC's tags BAD with BadNotConnected."""
        snap: dict[str, Sample] = {}
        for b in self._bridges.values():
            snap.update(await b.read())
        return snap

    def _route(self, names: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
        routed: dict[str, list[str]] = {}
        unknown: list[str] = []
        for name in names:
            plc = self._plc_of.get(name)
            if plc is None:
                unknown.append(name)
            else:
                routed.setdefault(plc, []).append(name)
        return routed, unknown

    async def write(self, values: Mapping[str, float]) -> WriteResult:
        """Routed per PLC, concurrently; a down PLC refuses "connection down: not written"."""
        routed, unknown = self._route(values)
        jobs = [self._bridges[plc].write({n: values[n] for n in names}) for plc, names in routed.items()]
        accepted: list[str] = []
        refused: dict[str, str] = {n: "unknown tag" for n in unknown}
        for result in await asyncio.gather(*jobs):
            accepted.extend(result.accepted)
            refused.update(result.refused)
        return WriteResult(tuple(accepted), refused)

    async def read_now(self, names: Iterable[str] | None = None) -> dict[str, Sample]:
        """The Read service, routed per PLC and run concurrently; BAD samples (never an exception)
        for the tags of a PLC that is down or lost during the read. KeyError for a tag no PLC serves."""
        routed, unknown = self._route(self._plc_of if names is None else names)
        if unknown:
            raise KeyError(f"no PLC serves tag(s) {', '.join(unknown)}")
        results = await asyncio.gather(*(self._read_one(plc, ns) for plc, ns in routed.items()))
        out: dict[str, Sample] = {}
        for part in results:
            out.update(part)
        return out

    async def _read_one(self, plc: str, names: list[str]) -> dict[str, Sample]:
        b = self._bridges[plc]
        if not b.connected:
            return _bad(names, b.clock.now(), ua.StatusCodes.BadNotConnected)
        try:
            return await b.read_now(names)
        except _READ_ERRORS as exc:
            log.warning("read of %d tags on %s failed: %s", len(names), b.label, describe_error(exc))
            return _bad(names, b.clock.now(), ua.StatusCodes.BadCommunicationError)

    async def kick_watchdog(self, counter: int, node: str = "Diagnostics.ClientWatchdog") -> dict[str, bool]:
        """Write the watchdog counter to every PLC; per PLC, whether it took it (False when down,
        or when the PLC has no such variable or refuses it)."""
        names = list(self._bridges)
        oks = await asyncio.gather(*(self._bridges[n].kick_watchdog(counter, node) for n in names))
        return dict(zip(names, oks))
