"""The operator face of `pilot run` against real servers: the OperatorServer (asyncua) secured with
SignAndEncrypt, called by asyncua clients (``call_operator``) and by node-opcua. Roles decide who
may act, the identity is the authenticated session's, every action (refused ones included) is in
the audit journal and in the recorder's points, arguments are checked before anything runs, and
actions are applied between ticks on the loop's thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from asyncua import ua

from controllers.alarms import AlarmManager
from controllers.guard import Guard
from controllers.loop import ControlLoop
from opcua_server.audit import AuditJournal, read_journal
from opcua_server.client_security import ClientSecurity, connect_client
from opcua_server.node_interop import NodeScript, free_port
from opcua_server.operator import OPERATOR_NS, OperatorServer, call_operator
from opcua_server.security import SecurityError
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot_config import load_config

PASSWORDS = {"vera": "vera-viewer-pass", "olga": "olga-operator-pass", "erik": "erik-engineer-pass"}
ROLES = {"vera": "viewer", "olga": "operator", "erik": "engineer"}
SECURE = (("Basic256Sha256", "SignAndEncrypt"),)
ALARM = "CELL1.TEMP.HI"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture()
def loop(hot_loop):
    """A control loop with CELL1.TEMP above its HI and HH limits (alarms unacknowledged)."""
    assert ALARM in {a.alarm_id for a in hot_loop.alarms.active()}
    return hot_loop


def _users() -> UserDirectory:
    users = UserDirectory()
    for name, password in PASSWORDS.items():
        users.add(name, password, ROLES[name])
    return users


def _security(pki, **kw) -> ServerSecurity:
    return ServerSecurity(endpoints=SECURE, pki=pki, users=_users(), **kw)


def _as(pki, user: str | None, password: str | None = None) -> ClientSecurity:
    return ClientSecurity("Basic256Sha256", "SignAndEncrypt", pki=pki, username=user,
                          password=password if password is not None else PASSWORDS.get(user or ""))

@contextlib.asynccontextmanager
async def logged_in(url: str, console, who: str):
    """A client of the operator server logged in as ``who``, and the operator namespace index."""
    client = await connect_client(url, _as(console, who))
    try:
        yield client, await client.get_namespace_index(OPERATOR_NS)
    finally:
        await client.disconnect()



async def _drain_forever(server: OperatorServer) -> None:
    """What run_live does at the start of each poll iteration."""
    while True:
        server.drain(100.0)  # the plant time of the snapshot in ``loop``
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving(loop, security, audit, *, drain: bool = True, drain_timeout_s: float = 5.0):
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server = OperatorServer(loop, url, security, audit, drain_timeout_s=drain_timeout_s)
    await server.start()
    task = asyncio.create_task(_drain_forever(server)) if drain else None
    try:
        yield server, url
    finally:
        if task is not None:
            task.cancel()
        await server.stop()


async def _refusal(coro) -> str:
    """The status code name a call is refused with ('' when it was not refused)."""
    try:
        await coro
    except ua.UaStatusCodeError as exc:
        return ua.StatusCode(exc.code).name
    return ""


async def _delete_refusal(client, node) -> str:
    """DeleteNodes answers per node, or the whole service is refused."""
    try:
        _, results = await client.delete_nodes([node])
    except ua.UaStatusCodeError as exc:
        return ua.StatusCode(exc.code).name
    return results[0].name


def _journal(tmp_path):
    points: list = []
    return AuditJournal(tmp_path / "audit.jsonl", sink=points.extend), points


def test_roles_decide_who_acknowledges_shelves_and_changes_modes(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit, points = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            out = {"viewer_list": json.loads(await call_operator(url, _as(console, "vera"), "List"))}
            for who in ("vera", "olga"):
                sec = _as(console, who)
                out[who] = {"ack": await _refusal(call_operator(url, sec, "Acknowledge", ALARM)),
                            "shelve": await _refusal(call_operator(url, sec, "Shelve", "CELL1.TEMP.HH", 600.0)),
                            "mode": await _refusal(call_operator(url, sec, "SetMode", "cell1", "auto")),
                            "limit": await _refusal(call_operator(url, sec, "SetShelveLimit", 3600.0))}
            erik = _as(console, "erik")
            out["erik_mode"] = await call_operator(url, erik, "SetMode", "cell1", "auto")
            out["erik_limit"] = await call_operator(url, erik, "SetShelveLimit", 3600.0)
            out["erik_too_long"] = await call_operator(url, erik, "Shelve", "CELL1.TEMP.HH", 7200.0)
            out["olga_unknown"] = await call_operator(url, _as(console, "olga"), "Acknowledge", "NO.SUCH.ALARM")
            return out

    out = asyncio.run(main())
    audit.close()
    assert ALARM in {a["id"] for a in out["viewer_list"]}  # a viewer reads
    assert out["vera"] == {k: "BadUserAccessDenied" for k in ("ack", "shelve", "mode", "limit")}
    assert out["olga"] == {"ack": "", "shelve": "", "mode": "BadUserAccessDenied", "limit": "BadUserAccessDenied"}
    assert out["erik_mode"] == "ok" and loop.modes["cell1"] == "auto"
    assert out["erik_limit"] == "ok" and loop.alarms.config.max_shelve_s == 3600.0
    assert out["erik_too_long"].startswith("error") and "3600" in out["erik_too_long"]  # the new limit holds
    assert out["olga_unknown"] == "error: unknown alarm 'NO.SUCH.ALARM'"
    # the alarm journal names the authenticated user, never a typed name
    ops = {(e.alarm_id, e.note.split()[0]): e.operator for e in loop.alarms.journal if e.operator}
    assert ops == {(ALARM, "acknowledged"): "olga", ("CELL1.TEMP.HH", "shelved"): "olga"}
    # the audit journal: every action, refused ones included, with user and role; 0600
    entries = read_journal(tmp_path / "audit.jsonl")
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600
    seen = [(e["user"], e["role"], e["action"], e["target"], e["result"].split(":")[0]) for e in entries]
    assert seen == [
        ("vera", "viewer", "acknowledge", ALARM, "refused"), ("vera", "viewer", "shelve", "CELL1.TEMP.HH", "refused"),
        ("vera", "viewer", "set_mode", "cell1", "refused"), ("vera", "viewer", "set_shelve_limit", "", "refused"),
        ("olga", "operator", "acknowledge", ALARM, "ok"), ("olga", "operator", "shelve", "CELL1.TEMP.HH", "ok"),
        ("olga", "operator", "set_mode", "cell1", "refused"), ("olga", "operator", "set_shelve_limit", "", "refused"),
        ("erik", "engineer", "set_mode", "cell1", "ok"), ("erik", "engineer", "set_shelve_limit", "", "ok"),
        ("erik", "engineer", "shelve", "CELL1.TEMP.HH", "refused"),
        ("olga", "operator", "acknowledge", "NO.SUCH.ALARM", "refused")]
    assert entries[5]["arguments"] == {"duration_s": 600.0} and entries[8]["arguments"] == {"mode": "auto"}
    assert all(e["wall"].endswith("Z") and e["t"] == 100.0 for e in entries)
    # ... and in the historian: one audit point per entry, 1.0 applied, 0.0 refused
    assert [(p.measurement, p.tag, p.value) for p in points][:2] == [
        ("audit", "OPERATOR.ACKNOWLEDGE", 0.0), ("audit", "OPERATOR.SHELVE", 0.0)]
    assert len(points) == len(entries) and points[4].value == 1.0 and points[4].quality == "good"
    assert json.loads(points[4].text) == {"user": "olga", "role": "operator", "target": ALARM,
                                          "result": "ok: 1 transition(s)"}


def test_anonymous_callers_are_refused_and_journalled(loop, pkis, tmp_path):
    """Anonymous sessions are off once users exist; allowed explicitly, they still only read."""
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            with pytest.raises(SecurityError):  # users configured: no anonymous session at all
                await call_operator(url, _as(console, None), "List")
        async with serving(loop, _security(server_pki, allow_anonymous=True), audit) as (_, url):
            anon = _as(console, None)
            return (await call_operator(url, anon, "List"),
                    [await _refusal(call_operator(url, anon, m, *a)) for m, a in (
                        ("Acknowledge", (ALARM,)), ("AcknowledgeAll", ()), ("Shelve", (ALARM, 60.0)),
                        ("Unshelve", (ALARM,)), ("SetMode", ("cell1", "auto")))])

    listed, refusals = asyncio.run(main())
    audit.close()
    assert ALARM in listed
    assert refusals == ["BadUserAccessDenied"] * 5
    assert loop.modes["cell1"] == "advisory" and not [e for e in loop.alarms.journal if e.operator]
    entries = read_journal(tmp_path / "audit.jsonl")
    assert [(e["user"], e["role"], e["result"]) for e in entries] == [
        ("anonymous", "anonymous", f"refused: {m} needs the {r} role") for m, r in (
            ("Acknowledge", "operator"), ("AcknowledgeAll", "operator"), ("Shelve", "operator"),
            ("Unshelve", "operator"), ("SetMode", "engineer"))]


def test_admin_and_wrong_passwords_are_refused_at_login(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            refused = []
            for user, password in (("admin", "admin-any-password"), ("erik", "not-eriks-password")):
                with pytest.raises(SecurityError) as info:
                    await call_operator(url, _as(console, user, password), "SetMode", "cell1", "auto")
                refused.append(str(info.value))
            return refused

    refused = asyncio.run(main())
    audit.close()
    assert all("BadUserAccessDenied" in r or "BadIdentityToken" in r for r in refused), refused
    assert loop.modes["cell1"] == "advisory" and audit.entries == 0  # no session, no action


def test_no_client_adds_or_deletes_nodes_or_writes_the_variables(loop, pkis, tmp_path):
    """Not even an engineer: the address space of the operator server is the server's own."""
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            async with logged_in(url, console, "erik") as (client, idx):
                obj = client.get_node(ua.NodeId("Operator", idx))
                modes = client.get_node(ua.NodeId("Operator.Modes", idx))
                alarms = client.get_node(ua.NodeId("Operator.Alarms", idx))
                set_mode = client.get_node(ua.NodeId("Operator.SetMode", idx))
                before = await alarms.read_value()
                out = {
                    "add": await _refusal(obj.add_object(idx, "Intruder")),
                    "delete": await _delete_refusal(client, set_mode),
                    "write_modes": await _refusal(modes.write_value(ua.Variant('{"cell1": "auto"}',
                                                                               ua.VariantType.String))),
                    "write_alarms": await _refusal(alarms.write_value(ua.Variant("[]", ua.VariantType.String))),
                    "rename": await _refusal(set_mode.write_attribute(ua.AttributeIds.DisplayName, ua.DataValue(
                        ua.Variant(ua.LocalizedText("x"), ua.VariantType.LocalizedText)))),
                }
                out["alarms_kept"] = await alarms.read_value() == before
                out["set_mode_still_works"] = await obj.call_method(set_mode, "cell1", "manual")
                return out

    out = asyncio.run(main())
    audit.close()
    assert out["add"] == "BadUserAccessDenied" and out["delete"] == "BadUserAccessDenied", out
    assert out["write_modes"] in ("BadNotWritable", "BadUserAccessDenied"), out
    assert out["write_alarms"] in ("BadNotWritable", "BadUserAccessDenied"), out
    assert out["rename"] in ("BadNotWritable", "BadUserAccessDenied"), out
    assert out["alarms_kept"] and out["set_mode_still_works"] == "ok" and loop.modes["cell1"] == "manual"


def test_wrong_arguments_answer_their_status_codes_and_are_journalled(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            async with logged_in(url, console, "erik") as (client, idx):

                async def raw(method, *variants):
                    req = ua.CallMethodRequest(ObjectId=ua.NodeId("Operator", idx),
                                               MethodId=ua.NodeId(f"Operator.{method}", idx),
                                               InputArguments=list(variants))
                    (res,) = await client.uaclient.call([req])
                    return res.StatusCode.name, [r.name for r in res.InputArgumentResults]

                def s(v):
                    return ua.Variant(v, ua.VariantType.String)

                def d(v):
                    return ua.Variant(v, ua.VariantType.Double)

                return {"missing": await raw("Shelve", s(ALARM)), "too_many": await raw("Acknowledge", s(ALARM), s("x")),
                        "type": await raw("Shelve", s(ALARM), s("600")), "none": await raw("SetMode"),
                        "list_extra": await raw("List", d(1.0)), "good": await raw("Shelve", s(ALARM), d(600.0))}

    out = asyncio.run(main())
    audit.close()
    assert out["missing"][0] == "BadArgumentsMissing" and out["none"][0] == "BadArgumentsMissing"
    assert out["too_many"][0] == "BadTooManyArguments" and out["list_extra"][0] == "BadTooManyArguments"
    assert out["type"] == ("BadInvalidArgument", ["Good", "BadTypeMismatch"])
    assert out["good"] == ("Good", ["Good", "Good"])
    results = [(e["action"], e["result"]) for e in read_journal(tmp_path / "audit.jsonl")]
    assert results == [
        ("shelve", "refused: Shelve takes 2 argument(s) (alarm_id, duration_s); got 1"),
        ("acknowledge", "refused: Acknowledge takes 1 argument(s); got 2"),
        ("shelve", "refused: argument duration_s must be a Double; got String"),
        ("set_mode", "refused: SetMode takes 2 argument(s) (loop, mode); got 0"),
        ("shelve", "ok: 1 transition(s)")]


def test_a_call_the_loop_does_not_drain_answers_not_running(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit, drain=False, drain_timeout_s=0.5) as (server, url):
            t0 = time.monotonic()
            answer = await call_operator(url, _as(console, "olga"), "Acknowledge", ALARM)
            return answer, time.monotonic() - t0, server.drain()

    answer, took_s, drained_late = asyncio.run(main())
    audit.close()
    assert answer == "error: the control loop is not running" and 0.5 <= took_s < 4.0
    assert drained_late == 0  # the timed-out request is never applied afterwards
    assert not [e for e in loop.alarms.journal if e.operator]
    (entry,) = read_journal(tmp_path / "audit.jsonl")
    assert (entry["user"], entry["result"]) == ("olga", "refused: the control loop is not running")


def test_operator_actions_never_run_during_a_tick(config, pkis, tmp_path, monkeypatch):
    """run_live against a simulated PLC, with consoles acknowledging and changing modes as fast as
    they can: every action runs on the loop's thread, outside ControlLoop.step."""
    from opcua_server.server import PlcServer
    from pilot.live import run_live
    from twin.plant import TwinPlant

    server_pki, console = pkis
    events: list[tuple[str, bool, int]] = []
    in_tick = threading.Event()
    step, ack, set_mode = ControlLoop.step, AlarmManager.acknowledge_all, Guard.set_mode

    def timed_step(self, snapshot, t):
        in_tick.set()
        try:
            return step(self, snapshot, t)
        finally:
            in_tick.clear()

    def spy(name, fn):
        def wrapped(self, *args):
            if "olga" in args or "manual" in args:  # the consoles' calls (not the loop's own start-up modes)
                events.append((name, in_tick.is_set(), threading.get_ident()))
            return fn(self, *args)
        return wrapped

    monkeypatch.setattr(ControlLoop, "step", timed_step)
    monkeypatch.setattr(AlarmManager, "acknowledge_all", spy("ack", ack))
    monkeypatch.setattr(Guard, "set_mode", spy("mode", set_mode))
    op_url = f"opc.tcp://127.0.0.1:{free_port()}"
    ticks: list = []

    async def console_task(who: str, method: str, *args) -> list[str]:
        while not ticks:
            await asyncio.sleep(0.05)
        answers = []
        async with logged_in(op_url, console, who) as (client, idx):
            obj = client.get_node(ua.NodeId("Operator", idx))
            while len(ticks) < 3 or len(answers) < 3:  # calls across several ticks, however loaded the machine
                answers.append(await obj.call_method(ua.NodeId(f"Operator.{method}", idx), *args))
        return answers

    async def main():
        plant = TwinPlant(config, seed=0)
        plc_url = f"opc.tcp://127.0.0.1:{free_port()}"
        plc = PlcServer(config.tags, config.opcua.namespace_uri, plant, plc_url, epoch_s=time.time())
        await plc.start()
        stop = asyncio.Event()
        scan = asyncio.create_task(plc.run(speed=120.0, stop=stop))
        consoles = [asyncio.create_task(console_task("olga", "AcknowledgeAll")),
                    asyncio.create_task(console_task("erik", "SetMode", "cell2", "manual"))]
        done = asyncio.Event()  # the loop runs until both consoles are through

        async def until_consoles_done():
            await asyncio.gather(*consoles)
            while len(ticks) < 4:
                await asyncio.sleep(0.05)
            done.set()

        waiter = asyncio.create_task(until_consoles_done())
        try:
            res = await run_live(config, plc_url, mode="advisory", stop=done, out_dir=tmp_path,
                                 operator_endpoint=op_url, operator_security=_security(server_pki),
                                 on_tick=lambda tick, result: ticks.append(tick))
            await waiter
            return res, [await c for c in consoles]
        finally:
            stop.set()
            await scan
            await plc.stop()

    t0 = time.monotonic()
    res, answers = asyncio.run(main())
    assert res.ticks >= 4, res.ticks
    main_thread = threading.get_ident()
    acks, modes = [e for e in events if e[0] == "ack"], [e for e in events if e[0] == "mode"]
    assert len(acks) >= 3 and len(modes) >= 3, (len(acks), len(modes), time.monotonic() - t0)
    assert not [e for e in events if e[1]], "an operator action ran during a tick"
    assert {e[2] for e in events} == {main_thread}
    assert all(a.startswith("ok") for a in answers[0]) and set(answers[1]) == {"ok"}
    entries = read_journal(tmp_path / "audit.jsonl")
    assert {(e["user"], e["action"]) for e in entries} == {("olga", "acknowledge_all"), ("erik", "set_mode")}
    assert len(entries) == len(answers[0]) + len(answers[1])


def test_node_opcua_operator_acknowledges_over_sign_and_encrypt(node_modules, loop, pki_pair, pkis, tmp_path):
    server_pki, _ = pkis
    (node_pki,) = pki_pair(("node-console", "urn:pilot-line:node-console"))
    shutil.copy(node_pki.cert, server_pki.trusted / "node-console.der")
    audit, _ = _journal(tmp_path)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            script = NodeScript("operator_client.js", url, "olga", PASSWORDS["olga"], node_pki.cert.with_suffix(".pem"),
                                node_pki.key, "urn:pilot-line:node-console", ALARM)
            return await asyncio.to_thread(script.run, 90)

    stdout = asyncio.run(main())
    audit.close()
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    r = json.loads(line[len("RESULT "):])
    assert r["acknowledge"] == {"status": "Good", "answer": "ok: 1 transition(s)"}, r
    assert r["set_mode"]["status"] == "BadUserAccessDenied", r
    assert r["missing_argument"]["status"] == "BadArgumentsMissing", r
    assert r["write_modes"] in ("BadNotWritable", "BadUserAccessDenied"), r
    assert r["delete_nodes"] == "BadUserAccessDenied" and r["add_nodes"] == "BadUserAccessDenied", r
    assert r["acknowledge_after"] == {"status": "Good", "answer": "ok: 0 transition(s)"}, r  # still there
    entries = read_journal(tmp_path / "audit.jsonl")
    assert [(e["user"], e["action"], e["result"]) for e in entries][0] == ("olga", "acknowledge", "ok: 1 transition(s)")
    assert [e for e in loop.alarms.journal if e.operator][0].operator == "olga"


def test_an_endpoint_off_the_loopback_is_refused_while_none_is_served(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)
    plain = ServerSecurity(endpoints=(("None", "None"), *SECURE), pki=server_pki, users=_users())
    with pytest.raises(SecurityError, match="off the loopback only without a None endpoint"):
        OperatorServer(loop, f"opc.tcp://0.0.0.0:{free_port()}", plain, audit)
    port = free_port()

    async def main():  # every endpoint secured: served on every interface, reached by its loopback address
        server = OperatorServer(loop, f"opc.tcp://0.0.0.0:{port}", _security(server_pki), audit)
        await server.start()
        try:
            return await call_operator(f"opc.tcp://127.0.0.1:{port}", _as(console, "vera"), "List")
        finally:
            await server.stop()

    assert ALARM in asyncio.run(main())
    audit.close()


def test_pilot_alarms_acts_as_the_logged_in_user(loop, pkis, tmp_path):
    """The CLI: no --operator any more; the user is the one logged in, refusals are one sentence."""
    server_pki, console = pkis
    audit, _ = _journal(tmp_path)
    def pilot(user: str, url: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "PILOT_OPCUA_PASSWORD": PASSWORDS[user]}
        return subprocess.run([sys.executable, "-m", "pilot", "alarms", "--user", user, "--pki", str(console.root),
                               "--endpoint", url, *args], capture_output=True, text=True, env=env, timeout=60)

    async def main():
        async with serving(loop, _security(server_pki), audit) as (_, url):
            return [await asyncio.to_thread(pilot, who, url, *args) for who, args in (
                ("vera", ("ack", ALARM)), ("olga", ("ack", ALARM)), ("olga", ("ack", ALARM, "--operator", "bob")),
                ("erik", ("shelve-limit", "2h")))]

    vera, olga, typed, erik = asyncio.run(main())
    audit.close()
    assert vera.returncode == 2 and "Acknowledge needs the operator role, which user vera does not have" in vera.stderr
    assert "Traceback" not in vera.stderr
    assert olga.returncode == 0 and "ok: acknowledged 1 alarm(s): CELL1.TEMP.HI" in olga.stdout, olga.stderr
    assert typed.returncode == 2 and "--operator" in typed.stderr  # no such option: the name is not typed
    assert erik.returncode == 0 and erik.stdout.strip() == "ok" and loop.alarms.config.max_shelve_s == 7200.0
    assert [(e["user"], e["result"].split(":")[0]) for e in read_journal(tmp_path / "audit.jsonl")] == [
        ("vera", "refused"), ("olga", "ok"), ("erik", "ok")]
