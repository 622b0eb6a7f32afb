"""The operator server's alarms as OPC UA Alarms & Conditions: a standard client (node-opcua)
subscribes to the events, sees the standing alarms after ConditionRefresh and acknowledges one as an
authenticated operator; asyncua's client (what ``pilot alarms`` uses) shelves and unshelves; roles,
stale event ids and the methods not offered are refused with their status codes; every action is in
the audit journal with the session's user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from asyncua import Server, ua
from asyncua.common import event_objects
from asyncua.server.monitored_item_service import WhereClauseEvaluator

from controllers.alarms_support import AlarmState
from opcua_server import alarm_client
from opcua_server.audit import AuditJournal, read_journal
from opcua_server.client_security import ClientSecurity, connect_client
from opcua_server.conditions import follow_subtypes_in_of_type, severity_of
from opcua_server.node_interop import NodeScript, free_port
from opcua_server.operator import OperatorServer
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory

PASSWORDS = {"vera": "vera-viewer-pass", "olga": "olga-operator-pass"}
ROLES = {"vera": "viewer", "olga": "operator"}
ALARM, HH = "CELL1.TEMP.HI", "CELL1.TEMP.HH"
T = 100.0  # plant time of the loop's snapshot
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def loop(hot_loop):
    return hot_loop


def _security(pki) -> ServerSecurity:
    users = UserDirectory()
    for name, password in PASSWORDS.items():
        users.add(name, password, ROLES[name])
    return ServerSecurity(endpoints=(("Basic256Sha256", "SignAndEncrypt"),), pki=pki, users=users)


def _as(pki, user: str) -> ClientSecurity:
    return ClientSecurity("Basic256Sha256", "SignAndEncrypt", pki=pki, username=user, password=PASSWORDS[user])


@contextlib.asynccontextmanager
async def serving(loop, pki, audit):
    """The operator server, drained (and its conditions published) the way run_live does."""
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server = OperatorServer(loop, url, _security(pki), audit)
    await server.start()

    async def drain():
        while True:
            if server.drain(T):
                await server.publish_conditions()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(drain())
    try:
        yield server, url
    finally:
        task.cancel()
        await server.stop()


@contextlib.asynccontextmanager
async def session(url, console, who):
    client = await connect_client(url, _as(console, who))
    try:
        yield client
    finally:
        await client.disconnect()


async def _status(coro) -> str:
    try:
        await coro
    except ua.UaStatusCodeError as exc:
        return ua.StatusCode(exc.code).name
    return "Good"


def test_node_opcua_refreshes_the_standing_alarms_and_acknowledges_one(node_modules, loop, pki_pair, pkis, tmp_path):
    server_pki, _ = pkis
    (node_pki,) = pki_pair(("node-console", "urn:pilot-line:node-console"))
    shutil.copy(node_pki.cert, server_pki.trusted / "node-console.der")
    audit = AuditJournal(tmp_path / "audit.jsonl")
    standing = sorted(a["id"] for a in loop.alarms.listing())

    async def main():
        async with serving(loop, server_pki, audit) as (_, url):
            script = NodeScript("alarm_client.js", url, "olga", PASSWORDS["olga"], node_pki.cert.with_suffix(".pem"),
                                node_pki.key, "urn:pilot-line:node-console", ALARM)
            return await asyncio.to_thread(script.run, 90)

    stdout = asyncio.run(main())
    audit.close()
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    r = json.loads(line[len("RESULT "):])
    assert r["before_refresh"] == 0 and r["refresh"] == "Good", r  # raised before the client came
    assert r["refreshed"] == standing, r  # every standing alarm, from the refresh alone
    hi = next(a for a in loop.alarms.active() if a.alarm_id == ALARM)
    assert r["alarm"]["severity"] == severity_of(hi.priority) and r["alarm"]["type"] == "ns=0;i=9341", r
    assert r["alarm"]["acked"] is False and r["alarm"]["active"] is True and r["alarm"]["source"] == "CELL1.TEMP", r
    assert r["alarm"]["message"] == loop.alarms.descriptions[ALARM], r
    assert r["acknowledge"] == "Good", r
    assert r["after"] == {"acked": True, "user": "olga", "comment": "seen from node-opcua", "retain": True}, r
    assert r["acknowledge_again"] == "BadConditionBranchAlreadyAcked", r
    assert r["stale_event_id"] == "BadEventIdUnknown", r
    state = {a.alarm_id: a.state for a in loop.alarms.active()}
    assert state[ALARM] == AlarmState.ACK_ACTIVE and state[HH] == AlarmState.UNACK_ACTIVE
    entries = read_journal(tmp_path / "audit.jsonl")
    assert [(e["user"], e["action"], e["target"], e["arguments"], e["result"].split(":")[0]) for e in entries] == [
        ("olga", "acknowledge", ALARM, {"comment": "seen from node-opcua"}, "ok"),
        ("olga", "acknowledge", ALARM, {"comment": "twice"}, "refused"),
        ("olga", "acknowledge", ALARM, {"comment": "stale"}, "refused")]
    assert [e.operator for e in loop.alarms.journal if e.alarm_id == ALARM][-1] == "olga"


def test_standing_rows_carry_priority_value_limit_and_unit(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit = AuditJournal(tmp_path / "audit.jsonl")

    async def main():
        async with serving(loop, server_pki, audit) as (_, url):
            async with session(url, console, "vera") as vera:  # a viewer may list
                return {r["id"]: r for r in await alarm_client.standing(vera)}

    rows = asyncio.run(main())
    audit.close()
    assert set(rows) == {a["id"] for a in loop.alarms.listing()}
    hh = rows[HH]
    assert hh["priority_name"] == "critical" and hh["severity"] == 900 and hh["state"] == "unacknowledged-active"
    assert hh["value"] == 650.0 and hh["eng_unit"] == "degC" and hh["limit"] == 640.0 and hh["tag"] == "CELL1.TEMP"
    assert hh["since"] == T and hh["description"] == loop.alarms.descriptions[HH]
    bad = next(r for k, r in rows.items() if k.endswith(".BADPV"))
    assert bad["value"] is None and bad["limit"] is None  # a missing tag: its InputNode is Bad


def test_shelving_answers(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit = AuditJournal(tmp_path / "audit.jsonl")
    limit_s = loop.alarms.config.max_shelve_s

    async def main():
        out = {}
        async with serving(loop, server_pki, audit) as (_, url):
            async with session(url, console, "vera") as vera:
                out["vera_ack"] = await _status(alarm_client.acknowledge(vera, [HH]))
                out["vera_shelve"] = await _status(alarm_client.shelve(vera, HH, 600.0))
            async with session(url, console, "olga") as olga:
                out["too_long"] = await _status(alarm_client.shelve(olga, HH, limit_s + 1))
                out["shelve"] = await _status(alarm_client.shelve(olga, HH, 600.0))
                await asyncio.sleep(0.2)  # the next drain publishes
                out["shelved"] = {r["id"]: r for r in await alarm_client.standing(olga)}[HH]
                node = await alarm_client.condition_node(olga, HH)
                shelving = olga.get_node(ua.NodeId(f"{node.Identifier}.ShelvingState", node.NamespaceIndex))
                out["one_shot"] = await _status(shelving.call_method(
                    ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_OneShotShelve)))
                out["confirm"] = await _status(olga.get_node(node).call_method(
                    ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Confirm),
                    ua.Variant(b"x", ua.VariantType.ByteString), ua.Variant(ua.LocalizedText("x"))))
                out["unshelve"] = await _status(alarm_client.shelve(olga, HH, None))
                out["unshelve_again"] = await _status(alarm_client.shelve(olga, HH, None))
                await asyncio.sleep(0.2)
                out["after"] = {r["id"]: r for r in await alarm_client.standing(olga)}[HH]
        return out

    r = asyncio.run(main())
    audit.close()
    assert r["vera_ack"] == "BadUserAccessDenied" and r["vera_shelve"] == "BadUserAccessDenied", r
    assert r["too_long"] == "BadShelvingTimeOutOfRange" and r["shelve"] == "Good", r
    assert r["shelved"]["state"] == "shelved" and r["shelved"]["shelved_until"] == pytest.approx(T + 600.0), r
    assert r["shelved"]["by"] == "olga", r
    assert r["one_shot"] == "BadMethodInvalid" and r["confirm"] == "BadMethodInvalid", r
    assert r["unshelve"] == "Good" and r["unshelve_again"] == "BadConditionNotShelved", r
    assert r["after"]["state"] == "unacknowledged-active", r  # back in service with its condition present
    entries = read_journal(tmp_path / "audit.jsonl")
    assert [(e["user"], e["action"], e["result"].split(":")[0]) for e in entries] == [
        ("vera", "acknowledge", "refused"), ("vera", "shelve", "refused"), ("olga", "shelve", "refused"),
        ("olga", "shelve", "ok"), ("olga", "shelve_one_shot", "refused"), ("olga", "confirm", "refused"),
        ("olga", "unshelve", "ok"), ("olga", "unshelve", "refused")]


def test_of_type_in_a_where_clause_follows_subtypes():
    """Part 4: OfType is true for the type and its subtypes (asyncua compares for equality)."""
    async def main():
        server = Server()
        await server.init()
        follow_subtypes_in_of_type()
        follow_subtypes_in_of_type()  # idempotent
        event = event_objects.ExclusiveLimitAlarm()

        def of_type(type_id: int) -> bool:
            where = ua.ContentFilter(Elements=[ua.ContentFilterElement(
                FilterOperator=ua.FilterOperator.OfType,
                FilterOperands=[ua.LiteralOperand(Value=ua.Variant(ua.NodeId(type_id)))])])
            return WhereClauseEvaluator(logging.getLogger("test"), server.iserver.aspace, where).eval(event)

        return {name: of_type(getattr(ua.ObjectIds, name)) for name in (
            "ExclusiveLimitAlarmType", "AlarmConditionType", "ConditionType", "BaseEventType",
            "OffNormalAlarmType", "AuditEventType")}

    assert asyncio.run(main()) == {"ExclusiveLimitAlarmType": True, "AlarmConditionType": True, "ConditionType": True,
                                   "BaseEventType": True, "OffNormalAlarmType": False, "AuditEventType": False}


def test_pilot_alarms_lists_and_acknowledges_through_the_conditions(loop, pkis, tmp_path):
    server_pki, console = pkis
    audit = AuditJournal(tmp_path / "audit.jsonl")

    def pilot(user: str, url: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "PILOT_OPCUA_PASSWORD": PASSWORDS[user]}
        return subprocess.run([sys.executable, "-m", "pilot", "alarms", "--user", user, "--pki", str(console.root),
                               "--endpoint", url, *args], capture_output=True, text=True, env=env, timeout=60)

    async def main():
        async with serving(loop, server_pki, audit) as (_, url):
            return [await asyncio.to_thread(pilot, who, url, *args) for who, args in (
                ("vera", ("list", "--json")), ("olga", ("ack", ALARM, "--comment", "on it")),
                ("olga", ("ack", ALARM)), ("olga", ("shelve", HH, "--duration", "30d")),
                ("olga", ("unshelve", HH)))]

    listed, ack, again, too_long, not_shelved = asyncio.run(main())
    audit.close()
    assert listed.returncode == 0, listed.stderr
    rows = {a["id"]: a for a in json.loads(listed.stdout)["alarms"]}
    assert set(rows) == {a["id"] for a in loop.alarms.listing()}
    assert rows[HH]["priority_name"] == "critical" and rows[HH]["value"] == 650.0 and rows[HH]["limit"] == 640.0
    assert ack.returncode == 0 and f"acknowledged 1 alarm(s): {ALARM}" in ack.stdout, ack.stderr
    assert again.returncode == 0 and "nothing to acknowledge" in again.stdout, again.stderr
    assert too_long.returncode == 2 and "at most alarms.max_shelve_s" in too_long.stderr, too_long.stderr
    assert not_shelved.returncode == 2 and "not shelved" in not_shelved.stderr, not_shelved.stderr
    assert "Traceback" not in too_long.stderr + not_shelved.stderr
    entries = read_journal(tmp_path / "audit.jsonl")
    assert ("olga", "acknowledge", {"comment": "on it"}) in [(e["user"], e["action"], e["arguments"]) for e in entries]
