"""Security of our OPC UA servers (the simulated PLC and the training server), against the real
servers with asyncua's client: endpoints and policies, per-session authorisation, client
certificates, login back-off, password policy, read-only nodes, no address-space changes; and
node-opcua's client (tests/node/server_sec_client.js) for sessions sharing a channel, the newer
policies and address-space changes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import time

import pytest
from asyncua import Client, Server, ua
from asyncua.crypto import security_policies as sp
from asyncua.crypto.permission_rules import User, UserRole

from opcua_server.node_interop import NodeScript, free_port
from opcua_server.security import (
    Pki,
    SecurityError,
    certificate_uri,
    create_certificate,
)
from opcua_server.server import PlcServer
from opcua_server.server_security import (
    BackoffPolicy,
    ServerSecurity,
    current_user,
    parse_endpoints,
    role_of,
    secure_server,
    server_security_from_env,
)
from opcua_server.server_sessions import LoginBackoff
from opcua_server.tagmap import Role
from opcua_server.users import UserDirectory
from pilot_config import load_config
from twin.plant import TwinPlant

OP_PW, ENG_PW, VIEW_PW = "operator-pass-1", "engineer-pass-1", "viewer-pass-01"
USERS = f"op:operator:{OP_PW};eng:engineer:{ENG_PW};vic:viewer:{VIEW_PW}"
POLICY_CLASSES = {"Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
                  "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
                  "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss}


@pytest.fixture(scope="module")
def config():
    return load_config()


def users() -> UserDirectory:
    return UserDirectory.parse(USERS, "test")


@contextlib.asynccontextmanager
async def plc(config, security: ServerSecurity):
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server = PlcServer(config.tags, config.opcua.namespace_uri, TwinPlant(config, seed=0), url,
                       security=security, epoch_s=time.time())
    await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


def client(url: str, user: str | None = None, password: str | None = None) -> Client:
    c = Client(url, timeout=5)
    if user:
        c.set_user(user)
        c.set_password(password)
    return c


def sp_write(ns: int, value: float = 150.0) -> ua.WriteParameters:
    wv = ua.WriteValue(NodeId=ua.NodeId("ADS.FEED.FLOW_SP", ns), AttributeId=ua.AttributeIds.Value,
                       Value=ua.DataValue(ua.Variant(value, ua.VariantType.Float)))
    return ua.WriteParameters(NodesToWrite=[wv])


# -- settings ----------------------------------------------------------------------------------
def test_parse_endpoints_names_what_is_allowed():
    assert parse_endpoints("None") == (("None", "None"),)
    assert parse_endpoints("None, SignAndEncrypt,Sign,SignAndEncrypt") == (
        ("None", "None"), ("Basic256Sha256", "SignAndEncrypt"), ("Basic256Sha256", "Sign"))
    assert parse_endpoints("Aes256_Sha256_RsaPss:SignAndEncrypt") == (("Aes256_Sha256_RsaPss", "SignAndEncrypt"),)
    secure = parse_endpoints("secure")
    assert len(secure) == 6 and ("Aes128_Sha256_RsaOaep", "Sign") in secure and ("None", "None") not in secure
    for bad in ("", "Basic128Rsa15:Sign", "Aes256_Sha256_RsaPss:None", "encrypt"):
        with pytest.raises(SecurityError, match="Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss") as err:
            parse_endpoints(bad)
        assert "None, Sign, SignAndEncrypt, secure" in str(err.value)


def test_server_security_from_env(tmp_path):
    env = {"PILOT_OPCUA_SERVER_SECURITY": "secure", "PILOT_OPCUA_USERS": USERS}
    sec = server_security_from_env(env)
    assert sec.secure and sec.pki == Pki(tmp_path.__class__("pki")) and not sec.anonymous  # users: anonymous off
    assert server_security_from_env(env, spec="None").pki is None
    sec = server_security_from_env({**env, "PILOT_OPCUA_PKI": str(tmp_path), "PILOT_OPCUA_ANONYMOUS": "1"})
    assert sec.pki == Pki(tmp_path) and sec.anonymous
    assert server_security_from_env({}).anonymous  # no users: anonymous sessions accepted
    assert not server_security_from_env({"PILOT_OPCUA_ANONYMOUS": "0", "PILOT_OPCUA_USERS": USERS}).anonymous
    with pytest.raises(SecurityError, match="PILOT_OPCUA_ANONYMOUS='maybe': use 1"):
        server_security_from_env({"PILOT_OPCUA_ANONYMOUS": "maybe"})
    sec = server_security_from_env({}, spec_env="PILOT_OPERATOR_SECURITY", default_spec="secure", pki=tmp_path)
    assert sec.endpoints == parse_endpoints("secure")


def test_short_passwords_refused_at_load(tmp_path):
    with pytest.raises(SecurityError) as err:
        UserDirectory.from_env({"PILOT_OPCUA_USERS": f"op:operator:{OP_PW}; eng:engineer:x"})
    msg = str(err.value)
    assert msg == ("PILOT_OPCUA_USERS, entry 2 (user 'eng'): the password is shorter than 12 characters "
                   "(PILOT_OPCUA_MIN_PASSWORD_LENGTH)")
    secrets = tmp_path / "users.txt"
    secrets.write_text(f"# plant\nop:operator:{OP_PW}\nvic:viewer:short-pw\n")
    with pytest.raises(SecurityError, match=rf"{secrets}, entry 3 \(user 'vic'\): the password is shorter"):
        UserDirectory.from_env({"PILOT_OPCUA_SECRETS": str(secrets)})
    relaxed = UserDirectory.from_env({"PILOT_OPCUA_SECRETS": str(secrets), "PILOT_OPCUA_MIN_PASSWORD_LENGTH": "8"})
    assert relaxed.authenticate("vic", "short-pw") == Role.VIEWER
    with pytest.raises(SecurityError, match="PILOT_OPCUA_MIN_PASSWORD_LENGTH='twelve': give a whole number"):
        UserDirectory.from_env({"PILOT_OPCUA_MIN_PASSWORD_LENGTH": "twelve"})


def test_roles_of_users():
    sec = ServerSecurity(users=users())
    assert role_of(sec, None) == Role.ANONYMOUS and role_of(sec, User()) == Role.ANONYMOUS
    assert role_of(sec, User(role=UserRole.User, name="op")) == Role.OPERATOR
    assert role_of(sec, User(role=UserRole.User, name="admin")) == Role.ANONYMOUS  # not a configured user
    assert role_of(sec, User(role=UserRole.Admin)) == Role.ENGINEER  # the server's own internal session


def test_login_backoff_doubles_and_warns_once_per_burst(caplog):
    now = [0.0]
    backoff = LoginBackoff(BackoffPolicy(first_s=0.1, max_s=5.0, quiet_s=60.0), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="opcua_server.server_sessions"):
        delays = []
        for _ in range(10):
            delays.append(backoff.record_failure("10.0.0.7"))
            now[0] += 0.5
        assert backoff.record_failure("10.0.0.8") == 0.1  # per client address
        backoff.record_success("10.0.0.7")
        assert backoff.record_failure("10.0.0.7") == 0.1  # a success ends the burst
        now[0] += 61
        assert backoff.record_failure("10.0.0.8") == 0.1  # so does a quiet minute
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["3 failed logins from 10.0.0.7 in the last 1.0 s; delaying answers by 0.4 s "
                        "(doubling up to 5 s while they go on)"]
    assert any("failed logins from 10.0.0.7 ended: 10 in 4.5 s" in r.getMessage() for r in caplog.records)


# -- sessions ----------------------------------------------------------------------------------
async def _shared_channel(config) -> dict:
    out = {}
    async with plc(config, ServerSecurity(users=users(), allow_anonymous=True)) as (server, url):
        async with client(url, "op", OP_PW) as c:
            ns = await c.get_namespace_index(config.opcua.namespace_uri)
            session = c.uaclient.session
            operator_token = session.authentication_token
            await c.create_session()  # a second, anonymous session on the same secure channel
            await c.activate_session()
            anonymous_token = session.authentication_token
            assert anonymous_token != operator_token
            out["anonymous"] = (await c.uaclient.write(sp_write(ns, 151.0)))[0].name
            session.restore_authentication_token(operator_token)
            out["operator"] = (await c.uaclient.write(sp_write(ns, 152.0)))[0].name
            session.restore_authentication_token(anonymous_token)
            out["anonymous_again"] = (await c.uaclient.write(sp_write(ns, 153.0)))[0].name
            session.restore_authentication_token(ua.NodeId(987654, 0))
            with pytest.raises(ua.UaStatusCodeError) as err:
                await c.uaclient.write(sp_write(ns))
            out["unknown_token"] = type(err.value).__name__
            session.restore_authentication_token(operator_token)
            out["value"] = await c.get_node(ua.NodeId("ADS.FEED.FLOW_SP", ns)).read_value()
    return out


def test_anonymous_session_on_an_operators_channel_cannot_write(config):
    out = asyncio.run(_shared_channel(config))
    assert out["anonymous"] == "BadUserAccessDenied" and out["anonymous_again"] == "BadUserAccessDenied"
    assert out["operator"] == "Good"  # the operator's session still writes, the newest session does not decide
    assert out["unknown_token"] == "BadSessionIdInvalid"
    assert out["value"] == pytest.approx(152.0)


async def _channel(url: str, pki: Pki | None = None, server_pki: Pki | None = None) -> Client:
    """A client with an open secure channel and no session of its own."""
    c = client(url)
    if pki is not None:
        await c.set_security(sp.SecurityPolicyBasic256Sha256, str(pki.cert), str(pki.key),
                             server_certificate=str(server_pki.cert), mode=ua.MessageSecurityMode.SignAndEncrypt)
    await c.connect_socket()
    await c.send_hello()
    await c.open_secure_channel()
    return c


async def _move_session(url: str, owner: Client, ns: int, server_pki: Pki, pki: Pki | None = None) -> tuple[str, str]:
    """ActivateSession of ``owner``'s session on a new channel, then a write there: (activation, write)."""
    c = await _channel(url, pki, server_pki)
    try:
        c.uaclient.session.restore_authentication_token(owner.uaclient.session.authentication_token)
        c._server_nonce = owner._server_nonce  # what a reconnecting client knows: the nonce it signs,
        c._policy_ids = owner._policy_ids  # the token policies and the server certificate to encrypt with
        if not c.security_policy.peer_certificate:
            c.security_policy.peer_certificate = server_pki.cert.read_bytes()
        try:
            await c.activate_session("op", OP_PW)
        except ua.UaStatusCodeError as exc:
            return type(exc).__name__, ""
        return "Good", (await c.uaclient.write(sp_write(ns, 160.0)))[0].name
    finally:
        await c.close_secure_channel()
        c.disconnect_socket()


async def _moves(config, tmp_path) -> dict:
    server_pki = _pki(tmp_path, "server", "urn:pilot-line:plc-sim")
    a, b = _pki(tmp_path, "a", "urn:pilot-line:a"), _pki(tmp_path, "b", "urn:pilot-line:b")
    for p in (a, b):
        shutil.copy(p.cert, server_pki.trusted / f"{p.root.name}.der")
    out = {}
    sec = ServerSecurity(endpoints=parse_endpoints("None,SignAndEncrypt"), pki=server_pki, users=users())
    async with plc(config, sec) as (server, url):
        async with client(url, "op", OP_PW) as c:  # a session over None, moved to another None channel
            ns = await c.get_namespace_index(config.opcua.namespace_uri)
            out["none_move"] = await _move_session(url, c, ns, server_pki)
            with pytest.raises(ua.UaStatusCodeError) as err:  # it left the old channel
                await c.uaclient.write(sp_write(ns))
            out["old_channel"] = type(err.value).__name__
        c = client(url, "op", OP_PW)
        c.application_uri = "urn:pilot-line:a"
        await c.set_security(sp.SecurityPolicyBasic256Sha256, str(a.cert), str(a.key),
                             server_certificate=str(server_pki.cert), mode=ua.MessageSecurityMode.SignAndEncrypt)
        async with c:
            out["other_certificate"] = await _move_session(url, c, ns, server_pki, b)
            out["plain_channel"] = await _move_session(url, c, ns, server_pki)
            out["same_certificate"] = await _move_session(url, c, ns, server_pki, a)
    return out


def test_a_session_moves_only_to_a_channel_of_the_same_client_certificate(config, tmp_path):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    out = asyncio.run(_moves(config, tmp_path))
    assert out["none_move"] == ("Good", "Good") and out["old_channel"] == "BadSessionIdInvalid"
    assert out["other_certificate"] == out["plain_channel"] == ("BadSecurityChecksFailed", "")
    assert out["same_certificate"] == ("Good", "Good")


async def _current_users() -> list:
    seen = []
    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    server.set_endpoint(url)
    await secure_server(server, ServerSecurity(users=users(), allow_anonymous=True))
    ns = await server.register_namespace("urn:test")

    async def whoami(parent):
        user = current_user()
        seen.append(None if user is None else user.name)
        return [ua.Variant(str(seen[-1]), ua.VariantType.String)]

    obj = await server.nodes.objects.add_object(ua.NodeId("T", ns), ua.QualifiedName("T", ns))
    await obj.add_method(ua.NodeId("T.WhoAmI", ns), ua.QualifiedName("WhoAmI", ns), whoami, [], [ua.VariantType.String])
    await server.start()
    try:
        for user, pw in (("eng", ENG_PW), (None, None), ("vic", VIEW_PW)):
            async with client(url, user, pw) as c:
                await c.get_node(ua.NodeId("T", ns)).call_method(ua.NodeId("T.WhoAmI", ns))
    finally:
        await server.stop()
    return seen


def test_current_user_is_the_requests_authenticated_user():
    assert asyncio.run(_current_users()) == ["eng", None, "vic"]


async def _logins(config) -> dict:
    out = {}
    async with plc(config, ServerSecurity(users=users())) as (server, url):  # users: anonymous off by default
        for name, (user, pw) in {"anonymous": (None, None), "admin": ("admin", "admin-password-1"),
                                 "admin_empty": ("admin", ""), "wrong": ("op", "operator-pass-2")}.items():
            with pytest.raises(ua.UaStatusCodeError) as err:
                async with client(url, user, pw):
                    pass
            out[name] = type(err.value).__name__
        async with client(url, "eng", ENG_PW) as c:
            ns = await c.get_namespace_index(config.opcua.namespace_uri)
            writes = {"heartbeat": ua.NodeId("Diagnostics.Heartbeat", ns), "measurement": ua.NodeId("ADS.FEED.FLOW", ns),
                      "server_state": ua.NodeId(ua.ObjectIds.Server_ServerStatus_State),
                      "namespaces": ua.NodeId(ua.ObjectIds.Server_NamespaceArray)}
            for name, nid in writes.items():
                dv = ua.DataValue(ua.Variant(7, ua.VariantType.UInt32))
                res = await c.uaclient.write(ua.WriteParameters(NodesToWrite=[
                    ua.WriteValue(NodeId=nid, AttributeId=ua.AttributeIds.Value, Value=dv)]))
                out[name] = res[0].name
            res = await c.uaclient.write(ua.WriteParameters(NodesToWrite=[ua.WriteValue(
                NodeId=ua.NodeId("ADS.FEED.FLOW_SP", ns), AttributeId=ua.AttributeIds.DisplayName,
                Value=ua.DataValue(ua.Variant(ua.LocalizedText("x"))))]))
            out["display_name"] = res[0].name
    return out


def test_logins_and_read_only_nodes(config):
    out = asyncio.run(_logins(config))
    assert out["anonymous"] == "BadIdentityTokenRejected"  # users configured: anonymous off
    assert out["admin"] == out["admin_empty"] == out["wrong"] == "BadUserAccessDenied"  # no admin bypass
    assert out["heartbeat"] == "BadNotWritable"  # read-only whatever the role (engineer here)
    assert out["measurement"] == "BadNotWritable"
    assert out["server_state"] == out["namespaces"] == "BadNotWritable"  # the server's own nodes
    assert out["display_name"] == "BadNotWritable"


async def _guessing(config, policy: BackoffPolicy, tries: int) -> float:
    async with plc(config, ServerSecurity(users=users(), login_backoff=policy)) as (server, url):
        t0 = time.perf_counter()
        for i in range(tries):
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                async with client(url, "op", f"guess-number-{i:04d}"):
                    pass
        elapsed = time.perf_counter() - t0
        async with client(url, "op", OP_PW):  # the right password is not delayed
            pass
        assert time.perf_counter() - t0 - elapsed < 1.0
    return tries / elapsed


def test_login_backoff_slows_a_password_guessing_loop(config, caplog):
    """20 wrong passwords in a row: without back-off asyncua's client manages about 100 tries/s on
    loopback; with a back-off of 0.05 s doubling to 0.25 s about 4 tries/s (with the default
    0.1 s doubling to 3 s, 0.33 tries/s once it has doubled five times)."""
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    without = asyncio.run(_guessing(config, BackoffPolicy(first_s=0), 20))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opcua_server.server_sessions"):
        with_backoff = asyncio.run(_guessing(config, BackoffPolicy(first_s=0.05, max_s=0.25), 20))
    figure = f"{without:.0f} tries/s without back-off, {with_backoff:.1f} tries/s with it"
    assert with_backoff < 5 and without > 5 * with_backoff, figure
    warnings = [r.getMessage() for r in caplog.records if "failed logins from 127.0.0.1" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one WARNING for the burst, not one per try
    print(figure)


async def _parallel_guessing(config, connections: int) -> float:
    policy = BackoffPolicy(first_s=0.2, max_s=0.2)
    async with plc(config, ServerSecurity(users=users(), login_backoff=policy)) as (server, url):
        async def guess(i):
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                async with client(url, "op", f"parallel-guess-{i:03d}"):
                    pass
        t0 = time.perf_counter()
        await asyncio.gather(*(guess(i) for i in range(connections)))
        return time.perf_counter() - t0


def test_login_backoff_is_not_multiplied_by_parallel_connections(config):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    elapsed = asyncio.run(_parallel_guessing(config, 8))
    assert elapsed >= 8 * 0.2 * 0.95, f"8 parallel wrong logins answered in {elapsed:.2f} s"


# -- address space -----------------------------------------------------------------------------
async def _address_space_changes(c: Client, ns: int, existing: ua.NodeId) -> dict:
    out = {}
    ref = (await c.get_node(existing).get_references())[0]  # a reference that exists
    calls = {
        "add_nodes": lambda: c.nodes.objects.add_folder(ua.NodeId("Evil", ns), ua.QualifiedName("Evil", ns)),
        "delete_nodes": lambda: c.delete_nodes([c.get_node(existing)]),
        "add_references": lambda: c.get_node(existing).add_reference(
            ua.NodeId(ua.ObjectIds.Server), ua.ObjectIds.Organizes, forward=True, bidirectional=False),
        "delete_references": lambda: c.get_node(existing).delete_reference(
            ref.NodeId, ref.ReferenceTypeId, forward=ref.IsForward, bidirectional=False),
    }
    for name, call in calls.items():
        try:
            await call()
            out[name] = "Good"
        except ua.UaStatusCodeError as exc:
            out[name] = type(exc).__name__
    out["still_there"] = (await c.get_node(existing).read_browse_name()).Name
    out["refs_kept"] = len(await c.get_node(existing).get_references()) > 0
    return out


async def _plc_address_space(config) -> dict:
    async with plc(config, ServerSecurity(users=users())) as (server, url):
        async with client(url, "eng", ENG_PW) as c:
            ns = await c.get_namespace_index(config.opcua.namespace_uri)
            return await _address_space_changes(c, ns, ua.NodeId("ADS.FEED.FLOW_SP", ns))


async def _training_address_space(line, monkeypatch, snap) -> dict:
    from opcua_server.instructor import serve_training
    from pilot.training.session import TrainingSession

    monkeypatch.setenv("PILOT_OPCUA_USERS", USERS)
    session = TrainingSession(line, session_id="sec-test")
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_training(session, url, speed=1.0, stop=stop, started=started,
                                              restore=TrainingSession.restore, snapshot_dir=snap.parent))
    await asyncio.wait_for(started.wait(), 60)
    try:
        async with client(url, "eng", ENG_PW) as c:
            ns = await c.get_namespace_index(line.opcua.namespace_uri)
            out = await _address_space_changes(c, ns, ua.NodeId("Instructor.Freeze", ns))
            inst = c.get_node(ua.NodeId("Instructor", ns))
            out["snapshot"] = await inst.call_method(ua.NodeId("Instructor.Snapshot", ns), snap.name)
            out["restore"] = await inst.call_method(ua.NodeId("Instructor.Restore", ns), snap.name)  # injected
            return out
    finally:
        stop.set()
        await task


def test_no_client_changes_the_address_space(config, monkeypatch, tmp_path):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    training = asyncio.run(_training_address_space(config, monkeypatch, tmp_path / "snap.json"))
    assert training.pop("snapshot").startswith("ok") and training.pop("restore").startswith("ok t=")
    for out in (asyncio.run(_plc_address_space(config)), training):
        assert {k: v for k, v in out.items() if k not in ("still_there", "refs_kept")} == dict.fromkeys(
            ("add_nodes", "delete_nodes", "add_references", "delete_references"), "BadUserAccessDenied")
        assert out["still_there"] in ("ADS.FEED.FLOW_SP", "Freeze") and out["refs_kept"]


# -- certificates and policies -----------------------------------------------------------------
async def _connect(url: str, server_pki: Pki, client_pki: Pki, policy: str, mode: str, app_uri: str, ns_uri: str) -> str:
    c = client(url, "op", OP_PW)
    c.application_uri = app_uri
    await c.set_security(POLICY_CLASSES[policy], str(client_pki.cert), str(client_pki.key),
                         server_certificate=str(server_pki.cert), mode=getattr(ua.MessageSecurityMode, mode))
    try:
        async with c:
            ns = await c.get_namespace_index(ns_uri)
            return (await c.uaclient.write(sp_write(ns)))[0].name
    except ua.UaStatusCodeError as exc:
        return type(exc).__name__


async def _secure_connects(config, server_pki: Pki, endpoint: str, cases: dict) -> dict:
    """cases: name -> (client PKI, policy, mode, announced ApplicationUri); one server for all."""
    sec = ServerSecurity(endpoints=parse_endpoints(endpoint), pki=server_pki, users=users())
    async with plc(config, sec) as (server, url):
        return {name: await _connect(url, server_pki, *case, config.opcua.namespace_uri) for name, case in cases.items()}


def _pki(tmp_path, name: str, uri: str, **kw) -> Pki:
    pki = Pki(tmp_path / name)
    create_certificate(pki, uri, f"pilot-{name}", **kw)
    return pki


def test_every_secure_policy_with_asyncua_client(config, tmp_path):
    server_pki = _pki(tmp_path, "server", "urn:pilot-line:plc-sim")
    client_pki = _pki(tmp_path, "client", "urn:pilot-line:test-client")
    shutil.copy(client_pki.cert, server_pki.trusted / "client.der")
    cases = {f"{p}:{m}": (client_pki, p, m, "urn:pilot-line:test-client") for p in POLICY_CLASSES
             for m in ("Sign", "SignAndEncrypt")}
    got = asyncio.run(_secure_connects(config, server_pki, "secure", cases))
    assert got == dict.fromkeys(cases, "Good")


def test_expired_and_uri_mismatched_client_certificates_refused(config, tmp_path, caplog):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    server_pki = _pki(tmp_path, "server", "urn:pilot-line:plc-sim")
    now = dt.datetime.now(dt.UTC)
    expired = _pki(tmp_path, "expired", "urn:pilot-line:old-client", days=30, valid_from=now - dt.timedelta(days=60))
    future = _pki(tmp_path, "future", "urn:pilot-line:new-client", valid_from=now + dt.timedelta(days=2))
    good = _pki(tmp_path, "good", "urn:pilot-line:test-client")
    for p in (expired, future, good):
        shutil.copy(p.cert, server_pki.trusted / f"{p.root.name}.der")
    untrusted = _pki(tmp_path, "stranger", "urn:pilot-line:stranger")
    b = ("Basic256Sha256", "SignAndEncrypt")
    cases = {"expired": (expired, *b, "urn:pilot-line:old-client"),
             "not_yet_valid": (future, *b, "urn:pilot-line:new-client"),
             "uri_mismatch": (good, *b, "urn:pilot-line:someone-else"),
             "untrusted": (untrusted, *b, "urn:pilot-line:stranger"), "good": (good, *b, "urn:pilot-line:test-client")}
    with caplog.at_level(logging.WARNING, logger="opcua_server.security"):
        got = asyncio.run(_secure_connects(config, server_pki, "SignAndEncrypt", cases))
    assert got == {"expired": "BadCertificateTimeInvalid", "not_yet_valid": "BadCertificateTimeInvalid",
                   "uri_mismatch": "BadCertificateUriInvalid", "untrusted": "BadCertificateUntrusted", "good": "Good"}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "announces ApplicationUri 'urn:pilot-line:someone-else'" in logged and "not now" in logged


async def _readable_passwords(config, tmp_path) -> dict:
    server_pki = _pki(tmp_path, "server", "urn:pilot-line:plc-sim")
    client_pki = _pki(tmp_path, "client", "urn:pilot-line:test-client")
    shutil.copy(client_pki.cert, server_pki.trusted / "client.der")
    sec = ServerSecurity(endpoints=parse_endpoints("None,Sign,SignAndEncrypt"), pki=server_pki, users=users())
    out = {}
    async with plc(config, sec) as (server, url):
        for mode in ("None", "Sign", "SignAndEncrypt"):
            for readable in (False, True):
                c = client(url, "op", OP_PW)
                if mode != "None":
                    c.application_uri = "urn:pilot-line:test-client"
                    await c.set_security(sp.SecurityPolicyBasic256Sha256, str(client_pki.cert), str(client_pki.key),
                                         server_certificate=str(server_pki.cert),
                                         mode=getattr(ua.MessageSecurityMode, mode))
                if readable:  # a client that ignores the token policy and sends the password as it is
                    c.server_policy = lambda t: ua.UserTokenPolicy(PolicyId="username", TokenType=t,
                                                                   SecurityPolicyUri=sp.SecurityPolicyNone.URI)
                try:
                    async with c:
                        out[mode, readable] = "Good"
                except ua.UaStatusCodeError as exc:
                    out[mode, readable] = type(exc).__name__
    return out


def test_a_readable_password_is_refused_where_it_could_have_been_encrypted(config, tmp_path):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    out = asyncio.run(_readable_passwords(config, tmp_path))
    assert out == {("None", False): "Good", ("None", True): "BadIdentityTokenRejected",  # encrypted with the key
                   ("Sign", False): "Good", ("Sign", True): "BadIdentityTokenRejected",
                   ("SignAndEncrypt", False): "Good", ("SignAndEncrypt", True): "Good"}  # the channel encrypts


def test_own_certificate_created_on_first_start_and_trusted(config, tmp_path, caplog):
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    server_pki = Pki(tmp_path / "pki")  # empty: the server creates its certificate
    client_pki = _pki(tmp_path, "client", "urn:pilot-line:test-client")

    async def run():
        sec = ServerSecurity(endpoints=parse_endpoints("SignAndEncrypt"), pki=server_pki, users=users())
        async with plc(config, sec) as (server, url):
            b = ("Basic256Sha256", "SignAndEncrypt")
            # a client sharing the server's PKI folder (one certificate per host) is trusted with no trust step
            shared = await _connect(url, server_pki, server_pki, *b, certificate_uri(server_pki.cert),
                                    config.opcua.namespace_uri)
            other = await _connect(url, server_pki, client_pki, *b, "urn:pilot-line:test-client",
                                   config.opcua.namespace_uri)
            return shared, other
    with caplog.at_level(logging.INFO, logger="opcua_server.security"):
        assert asyncio.run(run()) == ("Good", "BadCertificateUntrusted")
    assert (server_pki.key.stat().st_mode & 0o777) == 0o600 and (server_pki.root.stat().st_mode & 0o777) == 0o700
    assert any(str(server_pki.cert) in r.getMessage() and "SHA-256" in r.getMessage() for r in caplog.records)


def test_secure_server_refuses_settings_nobody_could_use():
    with pytest.raises(SecurityError, match="need a PKI folder: --pki DIR or PILOT_OPCUA_PKI"):
        ServerSecurity(endpoints=parse_endpoints("SignAndEncrypt")).check()

    async def setup(sec):
        server = Server()
        await server.init()
        await secure_server(server, sec)
    with pytest.raises(SecurityError, match="anonymous sessions are off and no users are configured"):
        asyncio.run(setup(ServerSecurity(allow_anonymous=False)))


# -- node-opcua, a stack nobody here wrote -----------------------------------------------------
def _node_result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


async def _node_probe(config, security: ServerSecurity, runs: list[list[str]]) -> list[dict]:
    async with plc(config, security) as (server, url):
        out = []
        for argv in runs:
            script = NodeScript("server_sec_client.js", url, config.opcua.namespace_uri, *argv)
            out.append(_node_result(await asyncio.to_thread(script.run, 90)))
        return out


def test_node_client_two_sessions_on_one_channel_and_no_address_space_changes(node_modules, config, tmp_path):
    server_pki = _pki(tmp_path, "server", "urn:pilot-line:plc-sim")
    node_pki = _pki(tmp_path, "node", "urn:pilot-line:node-client")
    shutil.copy(node_pki.cert, server_pki.trusted / "node.der")
    cert = [str(node_pki.cert.with_suffix(".pem")), str(node_pki.key), "urn:pilot-line:node-client"]
    creds = ["op", OP_PW, "eng", ENG_PW, "ADS.FEED.FLOW_SP"]
    runs = [["None", "None", *creds], ["Basic256Sha256", "SignAndEncrypt", *creds, *cert],
            ["Aes128_Sha256_RsaOaep", "SignAndEncrypt", *creds, *cert], ["Aes256_Sha256_RsaPss", "Sign", *creds, *cert]]
    security = ServerSecurity(endpoints=parse_endpoints("None,secure"), pki=server_pki, users=users(),
                              allow_anonymous=True)
    results = asyncio.run(_node_probe(config, security, runs))
    for r in results:
        assert r["operator_first"] == "Good", r
        assert r["anonymous_session"] == "Good" and r["anonymous_write"] == "BadUserAccessDenied", r
        assert r["operator_after_anonymous"] == "Good" and r["anonymous_write_again"] == "BadUserAccessDenied", r
        assert r["value"] == pytest.approx(123.0)
        assert r["engineer"] == dict.fromkeys(("add_nodes", "delete_nodes", "add_references", "delete_references"),
                                              "BadUserAccessDenied"), r
        assert r["still_there"] == "ADS.FEED.FLOW_SP"
    assert [(r["policy"], r["mode"]) for r in results] == [tuple(run[:2]) for run in runs]


def test_node_client_anonymous_session_refused_when_users_configured(node_modules, config):
    security = ServerSecurity(users=users())  # users and no explicit choice: anonymous off
    [r] = asyncio.run(_node_probe(config, security, [["None", "None", "op", OP_PW, "eng", ENG_PW, "ADS.FEED.FLOW_SP"]]))
    # the endpoints offer no anonymous token, so node-opcua does not even try (asyncua's client, which
    # does, is refused at ActivateSession with BadIdentityTokenRejected: test_logins_and_read_only_nodes)
    assert "Cannot find ANONYMOUS user token policy" in r["anonymous_session"] and "anonymous_write" not in r
    assert r["operator_first"] == "Good"


async def _node_probe_training(line, argv: list[str]) -> dict:
    from opcua_server.instructor import serve_training
    from pilot.training.session import TrainingSession

    url = f"opc.tcp://127.0.0.1:{free_port()}"
    stop, started = asyncio.Event(), asyncio.Event()
    security = ServerSecurity(users=users(), allow_anonymous=True)
    task = asyncio.create_task(serve_training(TrainingSession(line, session_id="sec-node"), url, speed=1.0,
                                              stop=stop, started=started, security=security))
    await asyncio.wait_for(started.wait(), 60)
    try:
        script = NodeScript("server_sec_client.js", url, line.opcua.namespace_uri, *argv)
        return _node_result(await asyncio.to_thread(script.run, 90))
    finally:
        stop.set()
        await task


def test_node_client_on_the_training_server(node_modules, config):
    r = asyncio.run(_node_probe_training(config, ["None", "None", "op", OP_PW, "eng", ENG_PW, "ADS.FEED.FLOW_SP"]))
    assert r["operator_first"] == r["operator_after_anonymous"] == "Good" and r["anonymous_write"] == "BadUserAccessDenied"
    assert r["engineer"] == dict.fromkeys(("add_nodes", "delete_nodes", "add_references", "delete_references"),
                                          "BadUserAccessDenied"), r
