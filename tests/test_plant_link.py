"""PlantLink against three real PLC servers on loopback ports: one session per PLC; a PLC that
stops marks only its own tags BAD (at the loss and again when back, before the fresh values,
stamped on that PLC's clock), the others keep updating and taking writes; it is back within 5 s
of listening again; the console says down once, "still down" at growing intervals, back once."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass

import pytest
from asyncua import ua

from opcua_server.client_security import ClientSecurity
from opcua_server.link_state import STILL_DOWN_S, PlcClock, StillDown
from opcua_server.node_interop import free_port
from opcua_server.plant_link import PlantLink, security_for
from opcua_server.security import SecurityError
from opcua_server.server import PlcServer
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot_config.plcs import PlcConfig
from pilot_config.tags import Tag
from twin.signals import Quality, Sample, WriteResult

PASSWORD = "op-plant-link-secret"
USERS = UserDirectory.parse(f"op:operator:{PASSWORD}", "test")
SECURITY = ClientSecurity("None", "None", username="op", password=PASSWORD, allow_plaintext_password=True)
PLCS = ("ads", "sx", "el")
FAST = dict(backoff_s=(0.05, 0.5), watchdog_s=0.3, timeout_s=2.0)
BAD_COMM = ua.StatusCodes.BadCommunicationError


def plc_tags(plc: str, n: int = 4) -> list[Tag]:
    unit = plc.upper()
    tags = [Tag(name=f"{unit}.T{k}", signal=f"{plc}.t{k}", kind="sensor", unit="1", low=0, high=1000,
                opcua={"sampling_interval_ms": 50}) for k in range(n)]
    # setpoints: a subscription of their own (another sampling interval), values that do not change
    tags.append(Tag(name=f"{unit}.FLOW_SP", signal=f"{plc}.flow", kind="actuator", unit="L/h", low=0, high=100,
                    opcua={"sampling_interval_ms": 200}))
    tags.append(Tag(name=f"{unit}.BT_LIMIT_SP", signal=f"{plc}.limit", kind="setpoint", unit="%", low=0, high=30,
                    opcua={"sampling_interval_ms": 200}))  # engineer-only by its name
    return tags


class ToyPlant:
    """Sensors ramp with plant time; writable tags hold what was written."""

    dt = 0.1

    def __init__(self, tags: list[Tag]):
        self.tags = {t.name: t for t in tags}
        self.held = {t.name: 1.0 for t in tags if t.writable}
        self.t = 0.0

    def snapshot(self) -> dict[str, Sample]:
        ramp = (self.t * 10.0) % 1000.0
        return {n: Sample(self.held.get(n, ramp), self.t) for n in self.tags}

    def write(self, values) -> WriteResult:
        self.held.update({n: float(v) for n, v in values.items()})
        return WriteResult(tuple(values), {})

    def unit_of(self, name: str) -> str:
        return self.tags[name].plant_unit

    def advance(self, dt: float) -> None:
        self.t += dt


@dataclass
class Plc:
    config: PlcConfig
    tags: list[Tag]
    epoch_s: float
    server: PlcServer | None = None
    scan: asyncio.Task | None = None
    stop: asyncio.Event | None = None

    async def start(self, epoch_s: float | None = None) -> float:
        """Serve (again, on the same port); the wall time it listens."""
        self.epoch_s = self.epoch_s if epoch_s is None else epoch_s
        self.server = PlcServer(self.tags, self.config.namespace_uri, ToyPlant(self.tags), self.config.endpoint,
                                security=ServerSecurity(users=USERS), epoch_s=self.epoch_s, name=self.config.name)
        await self.server.start()
        t = time.time()
        self.stop = asyncio.Event()
        self.scan = asyncio.create_task(self.server.run(1.0, self.stop))
        return t

    async def halt(self) -> None:
        self.stop.set()
        await self.scan
        await self.server.stop()


def make_plcs(offsets: dict[str, float] | None = None) -> dict[str, Plc]:
    """Three PLCs, each clock ``offset`` s from the wall clock (default -1000 s: a PLC's clock, not ours)."""
    out = {}
    for name in PLCS:
        cfg = PlcConfig(name=name, endpoint=f"opc.tcp://127.0.0.1:{free_port()}", namespace_uri=f"urn:test:{name}")
        out[name] = Plc(cfg, plc_tags(name), time.time() + (offsets or {}).get(name, -1000.0))
    return out


async def until(pred, timeout_s: float = 5.0, step_s: float = 0.02) -> float:
    """Wait for ``pred()``; the wall time it became true (AssertionError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return time.time()
        await asyncio.sleep(step_s)
    raise AssertionError(f"not true within {timeout_s} s")


class Recorder:
    def __init__(self) -> None:
        self.samples: list[tuple[float, str, Sample]] = []
        self.links: list[tuple[str, bool, float]] = []

    def sample(self, name: str, s: Sample) -> None:
        self.samples.append((time.time(), name, s))

    def link(self, plc: str, up: bool, t: float) -> None:
        self.links.append((plc, up, t))

    def of(self, prefix: str, after: float = 0.0) -> list[tuple[float, str, Sample]]:
        return [r for r in self.samples if r[1].startswith(prefix) and r[0] >= after]


async def outage_scenario(plcs: dict[str, Plc]) -> dict:
    rec = Recorder()
    for p in plcs.values():
        await p.start()
    link = PlantLink([(p.config, p.tags) for p in plcs.values()], SECURITY, listener=rec.sample,
                     on_link=rec.link, **FAST)
    out: dict = {"rec": rec}
    try:
        await link.start()
        every_tag = {t.name for p in plcs.values() for t in p.tags}
        await until(lambda: {n for _, n, s in rec.samples if s.quality == Quality.GOOD} >= every_tag)  # first values in
        out["denied"] = await link.write({"ADS.BT_LIMIT_SP": 5.0})
        victim = plcs["sx"]
        last_good = max((r for r in rec.of("SX.") if r[2].quality == Quality.GOOD), key=lambda r: r[2].source_time)
        out["t_stop"] = time.time()
        await victim.halt()
        out["t_bad"] = await until(lambda: not link.bridge("sx").connected, 2.0)
        out["last_good"] = last_good
        out["snap_down"] = await link.read()
        out["now_down"] = await link.read_now(["SX.T0", "ADS.T0"])
        out["links_down"] = link.links()
        t_mid = time.time()
        out["writes_down"] = await link.write({"ADS.FLOW_SP": 42.0, "EL.FLOW_SP": 43.0, "SX.FLOW_SP": 44.0})
        fresh = lambda n: len([r for r in rec.of(n.upper(), t_mid) if r[2].quality == Quality.GOOD])  # noqa: E731
        await until(lambda: min(fresh("ads"), fresh("el")) >= 10, 5.0)  # the others keep updating
        out["sx_during"] = [r for r in rec.of("SX.", t_mid)]
        out["t_listen"] = await victim.start(epoch_s=victim.epoch_s - 300.0)  # its clock stepped back 300 s
        out["back"] = await link.wait_connected(5.0, ["sx"])
        out["t_back"] = time.time()
        sx = {t.name for t in victim.tags}
        await until(lambda: {n for t, n, s in rec.of("SX.", out["t_back"]) if s.quality == Quality.GOOD} == sx)
        out["links_up"] = link.links()
        out["now_up"] = await link.read_now()
        out["writes_up"] = await link.write({"SX.FLOW_SP": 45.0})
    finally:
        await link.close()
        for p in plcs.values():
            if p.stop is not None and not p.stop.is_set():
                await p.halt()
    return out


def test_one_plc_down_marks_only_its_tags_and_comes_back(caplog):
    plcs = make_plcs()
    with caplog.at_level(logging.INFO, logger="opcua_server.bridge"):
        r = asyncio.run(outage_scenario(plcs))
    sx_names = [t.name for t in plcs["sx"].tags]
    check_outage(r, sx_names)
    check_return(r, sx_names, caplog.messages)


def check_outage(r: dict, sx_names: list[str]) -> None:
    rec: Recorder = r["rec"]
    # a write the PLC refuses for the role names the status code
    assert r["denied"].accepted == () and "BadUserAccessDenied" in r["denied"].refused["ADS.BT_LIMIT_SP"]
    # within 2 s of the stop: every SX tag got a BAD / BadCommunicationError sample at t_down
    assert r["t_bad"] - r["t_stop"] < 2.0
    t_seen, _, s_seen = r["last_good"]
    for name in sx_names:
        marks = [(t, s) for t, n, s in rec.samples if n == name and s.quality == Quality.BAD]
        assert len(marks) == 2, name  # one at each end of the gap
        assert all(s.status == BAD_COMM and math.isnan(s.value) for _, s in marks)
        t_mark, down = marks[0]
        # on the PLC's clock (1000 s behind ours): last source time seen + wall seconds elapsed
        assert s_seen.source_time <= down.source_time <= s_seen.source_time + (t_mark - t_seen) + 0.05
        assert abs(down.source_time - t_mark) > 900
    # while down: read answers BadNotConnected, never a frozen value; the other PLCs are GOOD
    for name, s in r["snap_down"].items():
        if name.startswith("SX."):
            assert s.quality == Quality.BAD and s.status == ua.StatusCodes.BadNotConnected and math.isnan(s.value)
        else:
            assert s.quality == Quality.GOOD, name
    assert r["now_down"]["SX.T0"].status == ua.StatusCodes.BadNotConnected
    assert r["now_down"]["ADS.T0"].quality == Quality.GOOD
    down = r["links_down"]
    assert not down["sx"].up and down["sx"].outages == 1 and down["sx"].reconnects == 0 and down["sx"].last_error
    assert down["ads"].up and down["el"].up and down["ads"].outages == 0
    # the other PLCs kept updating (awaited in the scenario) and taking writes; the down one was silent
    assert r["sx_during"] == []
    w = r["writes_down"]
    assert set(w.accepted) == {"ADS.FLOW_SP", "EL.FLOW_SP"} and "connection down" in w.refused["SX.FLOW_SP"]


def check_return(r: dict, sx_names: list[str], messages: list[str]) -> None:
    rec: Recorder = r["rec"]
    # back within 5 s of listening, with the closing BAD sample before every fresh value
    assert r["back"] and r["t_back"] - r["t_listen"] < 5.0
    for name in sx_names:
        seq = [s for _, n, s in rec.samples if n == name]
        i_down, i_up = [i for i, s in enumerate(seq) if s.quality == Quality.BAD]
        assert all(s.quality == Quality.GOOD for s in seq[i_up + 1:]) and len(seq) > i_up + 1, name
        assert i_up == i_down + 1, name  # nothing between the marks
    up = r["links_up"]["sx"]
    assert up.up and up.reconnects == 1 and up.outages == 1
    assert all(s.quality == Quality.GOOD for s in r["now_up"].values()) and len(r["now_up"]) == 18
    assert r["writes_up"].accepted == ("SX.FLOW_SP",)
    # on_link: initial state of each PLC, then down and up for sx only (times on sx's clock)
    assert sorted(p for p, up_, _ in rec.links[:3]) == sorted(PLCS) and all(u for _, u, _ in rec.links[:3])
    assert [(p, u) for p, u, _ in rec.links[3:]] == [("sx", False), ("sx", True)]
    marks = [s for _, n, s in rec.samples if n == sx_names[0] and s.quality == Quality.BAD]
    assert [t for _, _, t in rec.links[3:]] == [marks[0].source_time, marks[1].source_time]
    # console: one WARNING down with the reason, one INFO back, nothing for the others
    downs = [m for m in messages if " down (" in m]
    assert len(downs) == 1 and downs[0].startswith("PLC sx (opc.tcp://") and "6 tags marked BAD" in downs[0]
    backs = [m for m in messages if "back after" in m]
    assert len(backs) == 1 and backs[0].startswith("PLC sx") and "6 items monitored" in backs[0]


async def start_down_scenario(plc: Plc, caplog) -> dict:
    rec = Recorder()
    link = PlantLink([(plc.config, plc.tags)], SECURITY, listener=rec.sample, on_link=rec.link,
                     still_down_s=(0.3, 0.6, 1.2), still_down_every_s=0.6, **{**FAST, "backoff_s": (0.02, 0.05)})
    out: dict = {"rec": rec}
    try:
        t0 = time.time()
        await link.start()  # nothing listens yet: starts down, keeps trying
        out["start_s"] = time.time() - t0
        out["snap"] = await link.read()
        out["links_start"] = link.links()
        out["write"] = await link.write({"ADS.FLOW_SP": 3.0})
        await until(lambda: sum("still down for" in m for m in caplog.messages) >= 3, 5.0)
        out["t_listen"] = await plc.start()
        out["back"] = await link.wait_connected(5.0)
        out["t_back"] = time.time()
        names = {t.name for t in plc.tags}
        await until(lambda: {n for t, n, s in rec.samples if s.quality == Quality.GOOD} == names)
        out["links_up"] = link.links()
    finally:
        await link.close()
        if plc.stop is not None:
            await plc.halt()
    return out


def test_plc_unreachable_at_start_starts_down_and_says_so_at_growing_intervals(caplog):
    plc = make_plcs()["ads"]
    with caplog.at_level(logging.INFO, logger="opcua_server.bridge"):
        r = asyncio.run(start_down_scenario(plc, caplog))
    rec: Recorder = r["rec"]
    assert r["start_s"] < 3.0
    assert all(s.quality == Quality.BAD and s.status == ua.StatusCodes.BadNotConnected for s in r["snap"].values())
    assert not r["links_start"]["ads"].up and r["links_start"]["ads"].outages == 1
    assert r["links_start"]["ads"].last_error.startswith("ConnectionRefusedError")
    assert "connection down" in r["write"].refused["ADS.FLOW_SP"]
    assert rec.links[0][:2] == ("ads", False) and rec.links[-1][:2] == ("ads", True)
    assert r["back"] and r["t_back"] - r["t_listen"] < 5.0
    for name in (t.name for t in plc.tags):
        seq = [s for _, n, s in rec.samples if n == name]
        assert [s.status for s in seq[:2]] == [BAD_COMM, BAD_COMM], name  # at the start and at the end of the gap
        assert all(s.quality == Quality.GOOD for s in seq[2:]) and len(seq) > 2, name
    still = [(rec_.created, m) for rec_ in caplog.records if "still down for" in (m := rec_.getMessage())]
    assert len(still) >= 3 and all(m.startswith("PLC ads") and "last error" in m for _, m in still)
    elapsed = [float(re.search(r"still down for ([\d.]+) s", m).group(1)) for _, m in still]
    assert elapsed[:3] == sorted(elapsed[:3])
    gaps = [b - a for (a, _), (b, _) in zip(still, still[1:])]
    assert gaps[1] > gaps[0]  # 0.3 -> 0.6 -> 1.2 s
    assert len([m for m in caplog.messages if " down (" in m]) == 1
    assert len([m for m in caplog.messages if "back after" in m]) == 1
    assert r["links_up"]["ads"].reconnects == 1


def test_a_refused_user_on_any_plc_is_raised_at_start():
    plcs = make_plcs()

    async def main():
        for p in plcs.values():
            await p.start()
        try:
            wrong = ClientSecurity("None", "None", username="op", password="not-the-password",
                                   allow_plaintext_password=True)
            link = PlantLink([(p.config, p.tags) for p in plcs.values()], wrong, **FAST)
            with pytest.raises(SecurityError) as err:
                await link.start()
            pinned = plcs["el"].config.model_copy(update={"security_policy": "Basic256Sha256",
                                                          "security_mode": "SignAndEncrypt"})
            link2 = PlantLink([(plcs["ads"].config, plcs["ads"].tags), (pinned, plcs["el"].tags)], SECURITY, **FAST)
            with pytest.raises(SecurityError) as err2:
                await link2.start()
            return str(err.value), str(err2.value), link, link2
        finally:
            for p in plcs.values():
                await p.halt()

    user, pin, link, link2 = asyncio.run(main())
    assert user.count("refused user op (BadUserAccessDenied)") == 3
    assert plcs["el"].config.endpoint in pin and "Basic256Sha256/SignAndEncrypt" in pin
    assert plcs["ads"].config.endpoint not in pin
    assert not any(lk.bridge(n).connected for lk in (link, link2) for n in lk.plcs)


def test_per_plc_security_pin_replaces_policy_and_mode_only():
    base = ClientSecurity("auto", "auto", username="op", password=PASSWORD)
    plc = PlcConfig(name="el", endpoint="opc.tcp://127.0.0.1:4842", namespace_uri="urn:x")
    assert security_for(plc, base) is base
    pinned = security_for(plc.model_copy(update={"security_policy": "Aes256_Sha256_RsaPss",
                                                 "security_mode": "Sign"}), base)
    assert (pinned.policy, pinned.mode, pinned.username, pinned.password) == ("Aes256_Sha256_RsaPss", "Sign", "op",
                                                                             PASSWORD)


def test_tags_on_two_plcs_and_unknown_tags_are_refused():
    a = PlcConfig(name="a", endpoint="opc.tcp://127.0.0.1:1", namespace_uri="urn:a")
    b = PlcConfig(name="b", endpoint="opc.tcp://127.0.0.1:2", namespace_uri="urn:b")
    with pytest.raises(ValueError, match="ADS.T0 is on PLC 'a' and on PLC 'b'"):
        PlantLink([(a, plc_tags("ads")), (b, plc_tags("ads"))], SECURITY)
    link = PlantLink([(a, plc_tags("ads")), (b, plc_tags("sx"))], SECURITY)
    assert link.plc_of("SX.T1") == "b" and link.tags_of("a")[0] == "ADS.T0"
    with pytest.raises(KeyError, match="no PLC serves tag 'NOPE'"):
        link.plc_of("NOPE")
    result = asyncio.run(link.write({"NOPE": 1.0}))
    assert result.refused == {"NOPE": "unknown tag"}


def test_still_down_schedule_grows_then_repeats_every_ten_minutes():
    sd = StillDown()
    due = [t for t in range(0, 3700) if sd.due(float(t))]
    assert due == [10, 30, 60, 120, 300, 600, 1200, 1800, 2400, 3000, 3600]
    assert STILL_DOWN_S[0] == 10.0
    late = StillDown((1.0, 2.0), 5.0)
    assert late.due(100.0) and not late.due(100.5)  # a long stall says it once, not once per missed mark


def test_plc_clock_follows_the_plc_and_rebases_on_a_new_session():
    clock = PlcClock()
    assert clock.now(50.0) == 50.0  # nothing seen yet: the wall clock
    clock.seen(1000.0, 10.0)
    assert clock.now(12.5) == pytest.approx(1002.5)
    clock.seen(900.0, 13.0)  # an unchanged value's old stamp does not move it back
    assert clock.now(13.0) == pytest.approx(1003.0)
    clock.seen(700.0, 14.0, rebase=True)  # the first value of a new session: the PLC clock stepped
    assert clock.now(15.0) == pytest.approx(701.0)


async def flaky_session_scenario(plc: Plc) -> dict:
    """The first session after an outage gives its values, then fails (as a link that drops again
    while the subscriptions are being restored); the second one holds."""
    rec = Recorder()
    await plc.start()
    link = PlantLink([(plc.config, plc.tags)], SECURITY, listener=rec.sample, **FAST)
    bridge = link.bridge("ads")
    original, failures, names = bridge._subscribe, [], {t.name for t in plc.tags}

    async def subscribe_then_fail() -> None:
        t0 = time.time()
        await original()
        if bridge.stats.outages and not failures:
            # every tag's value (both subscriptions) arrives while the session is still being set up
            every = lambda: {n for t, n, s in rec.samples if t >= t0 and s.quality == Quality.GOOD} == names  # noqa: E731
            try:
                failures.append(await until(every, 3.0))
            except AssertionError:
                failures.append(None)
            raise OSError("link dropped while restoring the subscriptions")

    bridge._subscribe = subscribe_then_fail
    try:
        await link.start()
        await until(lambda: {n for t, n, s in rec.samples if s.quality == Quality.GOOD} == names)
        await plc.halt()
        await until(lambda: not bridge.connected, 2.0)
        await plc.start()
        back = await link.wait_connected(5.0)
        t_back = time.time()
        await until(lambda: {n for t, n, s in rec.samples if t >= t_back and s.quality == Quality.GOOD} == names)
        return {"rec": rec, "failures": failures, "back": back, "links": link.links()}
    finally:
        await link.close()
        await plc.halt()


def test_a_session_that_fails_after_giving_values_reopens_the_gap():
    plc = make_plcs()["ads"]
    r = asyncio.run(flaky_session_scenario(plc))
    assert r["back"] and len(r["failures"]) == 1 and r["failures"][0] is not None  # nothing dropped meanwhile
    for name in (t.name for t in plc.tags):
        kinds = []
        for _, n, s in r["rec"].samples:
            if n == name:
                kind = "bad" if s.status == BAD_COMM else "good"
                if not kinds or kinds[-1] != kind:
                    kinds.append(kind)
        # good, gap opens, gap closes (fresh values of the failed session), opens again, closes, good
        assert kinds == ["good", "bad", "good", "bad", "good"], (name, kinds)
        marks = [s for _, n, s in r["rec"].samples if n == name and s.status == BAD_COMM]
        assert len(marks) == 4, name
    assert r["links"]["ads"].reconnects == 1 and r["links"]["ads"].outages == 1
