"""The client face of OPC UA security against real servers on loopback ports: endpoint choice,
the server certificate checked (untrusted, expired, wrong ApplicationUri, wrong host name: each
refused with its status code), passwords never readable on the wire unless explicitly allowed
(captured with a TCP relay), `pilot run`'s library path against a PLC that offers only
SignAndEncrypt, and the CLI's one red line."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from asyncua import Server, ua
from typer.testing import CliRunner

from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import (
    ClientSecurity,
    choose_endpoint,
    connect_client,
    endpoint_name,
)
from opcua_server.node_interop import free_port
from opcua_server.security import Pki, SecurityError, create_certificate
from opcua_server.server import PlcServer
from opcua_server.server_security import ServerSecurity, parse_endpoints, secure_server
from opcua_server.users import UserDirectory
from pilot.live import run_live
from pilot_config import load_config
from pilot_config.tags import Tag
from twin.plant import TwinPlant

NS = "urn:pilot-line:client-security-test"
SERVER_URI = "urn:pilot-line:test-plc"
PASSWORD = "op-client-face-secret"
ENG_PASSWORD = "eng-client-face-secret"
USERS = f"op:operator:{PASSWORD};eng:engineer:{ENG_PASSWORD}"
SE_ONLY = (("Basic256Sha256", "SignAndEncrypt"),)


def _pkis(tmp_path: Path, **server_cert) -> tuple[Pki, Pki]:
    """(server PKI with a certificate made as ``server_cert`` says, client PKI without one yet)."""
    server = Pki(tmp_path / "plc")
    create_certificate(server, server_cert.pop("app_uri", SERVER_URI), "test-plc", **server_cert)
    return server, Pki(tmp_path / "client")


def _trust_both_ways(server: Pki, client: Pki) -> None:
    from opcua_server.security import ensure_certificate

    ensure_certificate(client)
    shutil.copy(client.cert, server.trusted / "client.der")
    shutil.copy(server.cert, client.trusted / "plc.der")


async def _server(pki: Pki | None, endpoints, *, users: str = USERS, anonymous: bool | None = None,
                  announce_uri: str | None = None, port: int | None = None) -> tuple[Server, str]:
    """A started asyncua server secured by the project's ``secure_server``, one Double variable."""
    port = port or free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    srv = Server()
    await srv.init()
    srv.set_endpoint(url)
    security = ServerSecurity(endpoints=tuple(endpoints), pki=pki,
                              users=UserDirectory.parse(users, "test") if users else UserDirectory(),
                              allow_anonymous=anonymous)
    await secure_server(srv, security)
    if announce_uri is not None:
        await srv.set_application_uri(announce_uri)
    idx = await srv.register_namespace(NS)
    await srv.nodes.objects.add_variable(ua.NodeId("T0", idx), "T0", 21.5)
    await srv.start()
    return srv, url


def _tags() -> list[Tag]:
    return [Tag(name="T0", signal="x.y", kind="sensor", unit="1", low=0, high=100,
                opcua={"node_id": "T0", "data_type": "Double", "sampling_interval_ms": 100})]


async def _read_t0(client) -> float:
    idx = await client.get_namespace_index(NS)
    return await client.get_node(ua.NodeId("T0", idx)).read_value()


# -- endpoint choice -------------------------------------------------------------------------
def _ep(policy: str, mode: str, level: int = 0, tokens=(ua.UserTokenType.Anonymous,)) -> ua.EndpointDescription:
    from opcua_server.client_security import MODES, POLICIES

    return ua.EndpointDescription(
        EndpointUrl="opc.tcp://plc:4840", SecurityPolicyUri=POLICIES[policy].URI, SecurityMode=MODES[mode],
        SecurityLevel=level, UserIdentityTokens=[ua.UserTokenPolicy(TokenType=t) for t in tokens])


def test_endpoint_choice_is_pure_and_explains_a_miss():
    eps = [_ep("None", "None"), _ep("Basic256Sha256", "Sign", 50), _ep("Basic256Sha256", "SignAndEncrypt", 70),
           _ep("Aes128_Sha256_RsaOaep", "SignAndEncrypt", 75)]
    assert endpoint_name(choose_endpoint(eps, ClientSecurity())) == "Aes128_Sha256_RsaOaep/SignAndEncrypt"
    # the server's SecurityLevel ranks policies of one mode; without levels our order does
    eps_lvl = [_ep("Basic256Sha256", "SignAndEncrypt", 90), _ep("Aes256_Sha256_RsaPss", "SignAndEncrypt", 10)]
    assert endpoint_name(choose_endpoint(eps_lvl, ClientSecurity())) == "Basic256Sha256/SignAndEncrypt"
    eps_flat = [_ep("Aes256_Sha256_RsaPss", "SignAndEncrypt"), _ep("Basic256Sha256", "SignAndEncrypt")]
    assert endpoint_name(choose_endpoint(eps_flat, ClientSecurity())) == "Aes256_Sha256_RsaPss/SignAndEncrypt"
    assert endpoint_name(choose_endpoint(eps, ClientSecurity(mode="Sign"))) == "Basic256Sha256/Sign"
    with pytest.raises(SecurityError, match=r"no endpoint with security Aes256_Sha256_RsaPss/auto \(it offers "
                                            r"None/None, Basic256Sha256/Sign"):
        choose_endpoint(eps, ClientSecurity(policy="Aes256_Sha256_RsaPss"), "opc.tcp://plc:4840")
    with pytest.raises(SecurityError, match="accepts no user name login"):
        choose_endpoint(eps, ClientSecurity(username="op", password=PASSWORD))
    with pytest.raises(SecurityError, match="cannot go with mode"):
        ClientSecurity(policy="Basic256Sha256", mode="None")
    with pytest.raises(SecurityError, match=r"not known: use one of auto, None, Basic256Sha256"):
        ClientSecurity(policy="Basic128Rsa15")
    assert PASSWORD not in repr(ClientSecurity(username="op", password=PASSWORD))


def test_most_secure_endpoint_chosen_and_pinning_works(tmp_path):
    server_pki, client_pki = _pkis(tmp_path)
    _trust_both_ways(server_pki, client_pki)

    async def main():
        srv, url = await _server(server_pki, parse_endpoints("None,secure"), anonymous=True)
        got = {}
        try:
            for key, sec in {"auto": ClientSecurity(pki=client_pki),
                             "b256": ClientSecurity(policy="Basic256Sha256", pki=client_pki),
                             "sign": ClientSecurity(mode="Sign", pki=client_pki),
                             "aes128-sign": ClientSecurity("Aes128_Sha256_RsaOaep", "Sign", client_pki),
                             "none": ClientSecurity("None", "None", client_pki)}.items():
                client = await connect_client(url, sec)
                pol = client.security_policy
                got[key] = (pol.URI.rpartition("#")[2], pol.Mode.name, await _read_t0(client))
                await client.disconnect()
        finally:
            await srv.stop()
        return got

    got = asyncio.run(main())
    assert got == {"auto": ("Aes256_Sha256_RsaPss", "SignAndEncrypt", 21.5),
                   "b256": ("Basic256Sha256", "SignAndEncrypt", 21.5),
                   "sign": ("Aes256_Sha256_RsaPss", "Sign", 21.5),
                   "aes128-sign": ("Aes128_Sha256_RsaOaep", "Sign", 21.5),
                   "none": ("None", "None_", 21.5)}


def test_settings_from_the_environment_and_overrides(tmp_path):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    env = {"PILOT_OPCUA_SECURITY_POLICY": "aes256_sha256_rsapss", "PILOT_OPCUA_SECURITY_MODE": "signandencrypt",
           "PILOT_OPCUA_PKI": str(tmp_path / "pki"), "PILOT_OPCUA_USER": "op",
           "PILOT_OPCUA_PASSWORD_FILE": str(secret), "PILOT_OPCUA_PASSWORD": "not-this-one-please",
           "PILOT_OPCUA_ALLOW_PLAINTEXT_PASSWORD": "1"}
    sec = ClientSecurity.from_env(env)
    assert (sec.policy, sec.mode, sec.pki, sec.username, sec.password, sec.allow_plaintext_password) == (
        "Aes256_Sha256_RsaPss", "SignAndEncrypt", Pki(tmp_path / "pki"), "op", PASSWORD, True)
    assert ClientSecurity.from_env({}) == ClientSecurity(pki=Pki(Path("pki")))
    pinned = ClientSecurity.from_env(env, mode="Sign", username="eng", password_file=None, password=ENG_PASSWORD,
                                     allow_plaintext_password=False)
    assert (pinned.mode, pinned.username, pinned.password, pinned.allow_plaintext_password) == (
        "Sign", "eng", ENG_PASSWORD, False)
    assert ClientSecurity.from_env({"PILOT_OPCUA_USER": "op", "PILOT_OPCUA_PASSWORD": PASSWORD}).password == PASSWORD
    with pytest.raises(SecurityError, match=f"password file {tmp_path / 'nope'} does not exist"):
        ClientSecurity.from_env({**env, "PILOT_OPCUA_PASSWORD_FILE": str(tmp_path / "nope")})
    with pytest.raises(SecurityError, match="a password is given but no user"):
        ClientSecurity.from_env({"PILOT_OPCUA_PASSWORD": PASSWORD})
    with pytest.raises(SecurityError, match="user op has no password"):
        ClientSecurity.from_env({"PILOT_OPCUA_USER": "op"})
    with pytest.raises(SecurityError, match=r"'Sign-and-encrypt' \(PILOT_OPCUA_SECURITY_MODE\) is not known"):
        ClientSecurity.from_env({"PILOT_OPCUA_SECURITY_MODE": "Sign-and-encrypt"})


# -- the server certificate, the own certificate, the server's refusals --------------------
def test_own_certificate_created_on_first_use_and_trusted_when_shared(tmp_path, caplog):
    """`pilot run` (server face) and `pilot alarms` (client) in one PKI folder: no trust step."""
    shared = Pki(tmp_path / "shared")

    async def main():
        srv, url = await _server(shared, SE_ONLY)  # the server creates the folder's certificate
        try:
            client = await connect_client(url, ClientSecurity(pki=shared, username="op", password=PASSWORD))
            value = await _read_t0(client)
            await client.disconnect()
        finally:
            await srv.stop()
        fresh = Pki(tmp_path / "fresh")
        srv, url = await _server(server_pki_of(tmp_path), SE_ONLY)
        try:
            with pytest.raises(SecurityError, match="BadCertificateUntrusted"):
                await connect_client(url, ClientSecurity(pki=fresh, username="op", password=PASSWORD))
        finally:
            await srv.stop()
        return value, fresh

    def server_pki_of(root: Path) -> Pki:
        pki = Pki(root / "other-plc")
        create_certificate(pki, SERVER_URI, "other-plc")
        return pki

    with caplog.at_level(logging.INFO, logger="opcua_server"):
        value, fresh = asyncio.run(main())
    assert value == 21.5 and not list(shared.trusted.iterdir())
    assert fresh.cert.is_file() and fresh.key.stat().st_mode & 0o077 == 0
    created = [r.getMessage() for r in caplog.records if "created the application certificate" in r.getMessage()]
    assert any(str(fresh.cert) in m and "SHA-256" in m for m in created), created


@pytest.mark.parametrize("case", ["untrusted", "expired", "uri", "host"])
def test_run_live_refuses_a_bad_server_certificate_with_its_status_code(case, tmp_path):
    """`pilot run`'s library path against a PLC that offers only SignAndEncrypt."""
    cert = {"expired": {"valid_from": dt.datetime.now(dt.UTC) - dt.timedelta(days=400), "days": 365},
            "host": {"hosts": ("plc.example.invalid",)}}.get(case, {})
    server_pki, client_pki = _pkis(tmp_path, **cert)
    _trust_both_ways(server_pki, client_pki)
    if case == "untrusted":
        for f in client_pki.trusted.iterdir():
            f.unlink()
    expected = {"untrusted": "BadCertificateUntrusted", "expired": "BadCertificateTimeInvalid",
                "uri": "BadCertificateUriInvalid", "host": "BadCertificateHostNameInvalid"}[case]
    config = load_config()

    async def main():
        srv, url = await _server(server_pki, SE_ONLY, announce_uri="urn:pilot-line:impostor" if case == "uri" else None)
        sec = ClientSecurity(pki=client_pki, username="op", password=PASSWORD)
        try:
            with pytest.raises(SecurityError) as err:
                await run_live(config, url, duration_s=60.0, operator_endpoint=None, bridge_options={"security": sec})
        finally:
            await srv.stop()
        return str(err.value)

    msg = asyncio.run(main())
    assert expected in msg and "\n" not in msg
    if case == "untrusted":
        rejected = list(client_pki.rejected.glob("*.der"))
        assert len(rejected) == 1 and f"move {rejected[0]} into {client_pki.trusted}/" in msg
    if case == "host":
        assert "'127.0.0.1'" in msg


def test_server_refusals_name_our_certificate_and_the_user(tmp_path):
    server_pki, client_pki = _pkis(tmp_path)
    _trust_both_ways(server_pki, client_pki)

    async def main():
        srv, url = await _server(server_pki, SE_ONLY)
        out = {}
        try:
            with pytest.raises(SecurityError) as err:
                await connect_client(url, ClientSecurity(pki=client_pki, username="op", password="wrong-password-x"))
            out["user"] = str(err.value)
            with pytest.raises(SecurityError) as err:
                await connect_client(url, ClientSecurity(pki=client_pki))  # users configured: no anonymous
            out["anonymous"] = str(err.value)
            for f in server_pki.trusted.iterdir():
                f.unlink()
            with pytest.raises(SecurityError) as err:
                await connect_client(url, ClientSecurity(pki=client_pki, username="op", password=PASSWORD))
            out["cert"] = str(err.value)
        finally:
            await srv.stop()
        return url, out

    url, out = asyncio.run(main())
    assert out["user"] == f"{url} refused user op (BadUserAccessDenied)"
    assert "accepts no anonymous sessions" in out["anonymous"] and "PILOT_OPCUA_USER" in out["anonymous"]
    assert out["cert"].startswith(f"{url} refused our certificate (BadCertificateUntrusted)")
    assert f"put our certificate {client_pki.cert} into the server's trusted folder" in out["cert"]


def test_run_live_against_a_sign_and_encrypt_only_plc(tmp_path, caplog):
    """Trusted certificates both ways: `pilot run`'s loop reads and writes over SignAndEncrypt."""
    server_pki, client_pki = _pkis(tmp_path)
    _trust_both_ways(server_pki, client_pki)
    config = load_config()
    users = UserDirectory.parse(USERS, "test")

    async def main():
        url = f"opc.tcp://127.0.0.1:{free_port()}"
        plant = TwinPlant(config, seed=0)
        plc = PlcServer(config.tags, config.opcua.namespace_uri, plant, url, epoch_s=time.time(),
                        security=ServerSecurity(endpoints=SE_ONLY, pki=server_pki, users=users))
        await plc.start()
        stop = asyncio.Event()
        scan = asyncio.create_task(plc.run(120.0, stop))
        sec = ClientSecurity(pki=client_pki, username="eng", password=ENG_PASSWORD)
        done, results = asyncio.Event(), []

        def on_tick(tick, result) -> None:
            results.append(result)
            if len(results) >= 2:
                done.set()

        try:
            res = await run_live(config, url, mode="auto", duration_s=3600.0, operator_endpoint=None, stop=done,
                                 on_tick=on_tick, bridge_options={"security": sec})
        finally:
            stop.set()
            await scan
            await plc.stop()
        return url, res

    with caplog.at_level(logging.INFO, logger="opcua_server.client_security"):
        url, res = asyncio.run(main())
    assert res.ticks == 2, res.ticks
    assert res.stats["writes_accepted"] > 0 and not res.refused, res.refused  # written as engineer
    assert f"connected to {url} (Basic256Sha256/SignAndEncrypt, user eng)" in caplog.text


async def _until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_bridge_reconnect_to_a_changed_server_certificate_refused_once_then_back_when_trusted(tmp_path, caplog):
    """The PLC comes back with another certificate: every reconnect goes through the same checks,
    the refusal is logged once (not per try), and trusting the new certificate brings the link back."""
    server_pki, client_pki = _pkis(tmp_path)
    _trust_both_ways(server_pki, client_pki)
    impostor = Pki(tmp_path / "replacement")
    create_certificate(impostor, SERVER_URI, "replacement-plc")
    shutil.copy(client_pki.cert, impostor.trusted / "client.der")
    sec = ClientSecurity(pki=client_pki, username="op", password=PASSWORD)

    async def main():
        port = free_port()
        srv, url = await _server(server_pki, SE_ONLY, port=port)
        bridge = OpcUaBridge(url, _tags(), NS, security=sec, backoff_s=(0.05, 0.1))
        await bridge.start()
        try:
            await srv.stop()
            await _until(lambda: not bridge.connected)
            srv, _ = await _server(impostor, SE_ONLY, port=port)
            await _until(lambda: bridge.stats.refusals >= 4)
            for f in client_pki.rejected.glob("*.der"):
                shutil.move(f, client_pki.trusted / f.name)
            back = await bridge.wait_connected(15.0)
            value = (await bridge.read_now(["T0"]))["T0"].value
        finally:
            await bridge.close()
            await srv.stop()
        return bridge.stats, back, value

    with caplog.at_level(logging.WARNING, logger="opcua_server.bridge"):
        stats, back, value = asyncio.run(main())
    assert back and value == 21.5 and stats.reconnects == 1
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "BadCertificateUntrusted" in refused[0], (stats.refusals, refused)


# -- passwords on the wire ---------------------------------------------------------------------
class Relay:
    """A loopback TCP relay that keeps every byte either way."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.up = bytearray()
        self.down = bytearray()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer, self.up), self._pipe(up_reader, writer, self.down))

    @staticmethod
    async def _pipe(reader, writer, capture: bytearray) -> None:
        try:
            while data := await reader.read(65536):
                capture += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _password_forms(password: str) -> list[bytes]:
    return [password.encode("utf-8"), password.encode("utf-16-le"), password.encode("utf-16-be")]


def test_relay_capture_of_secured_sessions_holds_no_password(tmp_path):
    """connect_client and `pilot run`'s bridge over SignAndEncrypt, and connect_client over Sign
    (where the user token itself is encrypted): the whole capture, the ActivateSession request
    included, holds the password in no encoding."""
    server_pki, client_pki = _pkis(tmp_path)
    _trust_both_ways(server_pki, client_pki)
    sec = ClientSecurity(mode="SignAndEncrypt", pki=client_pki, username="op", password=PASSWORD)

    async def main():
        srv, url = await _server(server_pki, parse_endpoints("None,Sign,SignAndEncrypt"))
        port = int(url.rsplit(":", 1)[1])
        try:
            async with Relay(port) as relay:
                client = await connect_client(relay.url, sec)
                direct_value = await _read_t0(client)
                await client.disconnect()
            async with Relay(port) as sign_relay:
                client = await connect_client(sign_relay.url, replace(sec, mode="Sign"))
                assert client.security_policy.Mode == ua.MessageSecurityMode.Sign
                await _read_t0(client)
                await client.disconnect()
            async with Relay(port) as bridge_relay:
                async with OpcUaBridge(bridge_relay.url, _tags(), NS, security=sec) as bridge:
                    bridge_value = (await bridge.read_now(["T0"]))["T0"].value
        finally:
            await srv.stop()
        return (relay, sign_relay, bridge_relay), direct_value, bridge_value

    relays, direct_value, bridge_value = asyncio.run(main())
    assert direct_value == 21.5 and bridge_value == 21.5  # the sessions were activated and used
    for r in relays:
        assert b"OPNF" in r.up and b"MSGF" in r.up and len(r.up) > 4000
        for form in _password_forms(PASSWORD):
            assert form not in r.up and form not in r.down


def test_password_over_none_refused_unless_allowed_and_then_visible_on_the_wire(tmp_path, caplog):
    """The control of the capture test: over a None channel with the explicit permission, the
    relay sees the password (so the capture would have seen it if it were there)."""

    async def main():
        srv, url = await _server(None, (("None", "None"),))
        port = int(url.rsplit(":", 1)[1])
        try:
            with pytest.raises(SecurityError) as err:
                await connect_client(url, ClientSecurity(username="op", password=PASSWORD))
            async with Relay(port) as relay:
                allowed = ClientSecurity(username="op", password=PASSWORD, allow_plaintext_password=True)
                client = await connect_client(relay.url, allowed)
                value = await _read_t0(client)
                await client.disconnect()
        finally:
            await srv.stop()
        return str(err.value), relay, value

    with caplog.at_level(logging.WARNING, logger="opcua_server.client_security"):
        refused, relay, value = asyncio.run(main())
    assert "would cross the wire readable on the None/None endpoint" in refused
    assert "--allow-plaintext-password" in refused and PASSWORD not in refused
    assert value == 21.5
    assert PASSWORD.encode() in relay.up  # the capture works
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sending the password of user op readable" in w for w in warnings), warnings
    assert not any(PASSWORD in w for w in warnings)


# -- the CLI -----------------------------------------------------------------------------------
@pytest.fixture()
def untrusted_plc(tmp_path):
    """A SignAndEncrypt-only server in a thread of its own (the CLI runs its own event loop)."""
    server_pki, _ = _pkis(tmp_path)
    loop = asyncio.new_event_loop()
    ready, box = threading.Event(), {}

    def serve():
        asyncio.set_event_loop(loop)
        box["srv"], box["url"] = loop.run_until_complete(_server(server_pki, SE_ONLY))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(box["srv"].stop())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield box["url"]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def _clean_env(tmp_path: Path) -> dict:
    names = ("PILOT_OPCUA_SECURITY_POLICY", "PILOT_OPCUA_SECURITY_MODE", "PILOT_OPCUA_USER",
             "PILOT_OPCUA_PASSWORD", "PILOT_OPCUA_PASSWORD_FILE", "PILOT_OPCUA_ALLOW_PLAINTEXT_PASSWORD",
             "PILOT_OPCUA_USERS", "PILOT_OPCUA_SECRETS", "PILOT_INFLUX_URL")
    return {**dict.fromkeys(names), "PILOT_OPCUA_PKI": str(tmp_path / "cli-pki"), "COLUMNS": "300"}


def _one_red_line(result, *needles: str) -> str:
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text and isinstance(result.exception, SystemExit), (result.exception, text)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["browse", "run"])
def test_cli_bad_input_and_untrusted_server_end_in_one_red_line(command, tmp_path, untrusted_plc):
    from pilot.cli import app

    runner = CliRunner()
    env = _clean_env(tmp_path)
    base = (["opcua", "browse", untrusted_plc] if command == "browse"
            else ["run", "--plc", untrusted_plc, "--operator-endpoint", "", "--duration", "1min"])
    _one_red_line(runner.invoke(app, [*base, "--security-policy", "Basic128Rsa15"], env=env),
                  "--security-policy", "'Basic128Rsa15' is not allowed", "Aes256_Sha256_RsaPss")
    missing = tmp_path / "no-such-password-file"
    _one_red_line(runner.invoke(app, [*base, "--user", "op", "--password-file", str(missing)], env=env),
                  f"password file {missing} does not exist")
    as_op = {**env, "PILOT_OPCUA_USER": "op", "PILOT_OPCUA_PASSWORD": PASSWORD}  # the deployments' way
    line = _one_red_line(runner.invoke(app, base, env=as_op), "BadCertificateUntrusted", "move ")
    cli_pki = Pki(tmp_path / "cli-pki")
    assert str(cli_pki.trusted) in line
    if command == "browse":  # the trust exchange of the error line, both ways: then it works, secured
        for f in cli_pki.rejected.glob("*.der"):
            shutil.move(f, cli_pki.trusted / f.name)
        shutil.copy(cli_pki.cert, tmp_path / "plc" / "trusted" / "cli.der")
        ok = runner.invoke(app, base, env=as_op)
        assert ok.exit_code == 0, ok.output
        assert f"namespace_uri: {NS}" in ok.output and "node_id: T0" in ok.output
