"""Users, roles and Basic256Sha256 between our own bridge and our own PLC server (the node-opcua
tests cover each side against a foreign stack)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import pytest

from opcua_server.bridge import ClientSecurity, OpcUaBridge
from opcua_server.node_interop import free_port
from opcua_server.security import Pki, SecurityError, create_certificate
from opcua_server.server import PlcServer
from opcua_server.server_security import ServerSecurity, parse_endpoints
from opcua_server.tagmap import Role, required_role
from opcua_server.users import UserDirectory
from pilot_config import load_config
from twin.plant import TwinPlant


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_users_from_env_and_secrets_file(tmp_path):
    secrets = tmp_path / "users.txt"
    secrets.write_text("# plant users\neve:engineer:e:with:colons\n")
    users = UserDirectory.from_env({"PILOT_OPCUA_USERS": "vic:viewer:viewer-pass-01; op:operator:operator-pass-1",
                                    "PILOT_OPCUA_SECRETS": str(secrets)})
    assert users.names() == ["eve", "op", "vic"]
    assert users.authenticate("eve", "e:with:colons") == Role.ENGINEER
    assert users.authenticate("op", "wrong") is None and users.authenticate("nobody", "x") is None
    with pytest.raises(SecurityError, match="name:role:password"):
        UserDirectory.parse("justaname", "PILOT_OPCUA_USERS")
    with pytest.raises(SecurityError, match="unknown role"):
        UserDirectory.parse("a:admin:x", "PILOT_OPCUA_USERS")
    with pytest.raises(SecurityError, match="not a file"):
        UserDirectory.from_env({"PILOT_OPCUA_SECRETS": str(tmp_path / "missing")})


def test_write_roles_from_the_tag_map(config):
    roles = {t.name: required_role(t) for t in config.tags}
    assert roles["ADS.FEED.FLOW"] is None and roles["DIST.PHASE"] is None
    assert roles["ADS.FEED.FLOW_SP"] == Role.OPERATOR and roles["CELL1.TEMP_SP"] == Role.OPERATOR
    assert roles["ADS.BT_LIMIT_SP"] == Role.ENGINEER


async def _roles_over_secure_channel(config, tmp_path, caplog) -> dict:
    server_pki, client_pki = Pki(tmp_path / "srv"), Pki(tmp_path / "cli")
    create_certificate(server_pki, "urn:pilot-line:plc-sim")
    create_certificate(client_pki, "urn:pilot-line:bridge")
    shutil.copy(client_pki.cert, server_pki.trusted / "bridge.der")
    shutil.copy(server_pki.cert, client_pki.trusted / "plc.der")
    users = UserDirectory.parse("op:operator:operator-pw-01;eng:engineer:engineer-pw-01;vic:viewer:viewer-pw-0001",
                                "test")
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    server = PlcServer(config.tags, config.opcua.namespace_uri, TwinPlant(config, seed=0), url, epoch_s=time.time(),
                       security=ServerSecurity(endpoints=parse_endpoints("Sign,SignAndEncrypt"), pki=server_pki,
                                               users=users))
    await server.start()
    out = {}
    try:
        for user, pw, mode in (("vic", "viewer-pw-0001", "Sign"), ("op", "operator-pw-01", "SignAndEncrypt"),
                               ("eng", "engineer-pw-01", "SignAndEncrypt")):
            async with OpcUaBridge(url, config.tags, config.opcua.namespace_uri,
                                   security=ClientSecurity(mode=mode, pki=client_pki, username=user, password=pw)) as b:
                out[user] = await b.write({"ADS.FEED.FLOW_SP": 150.0, "ADS.BT_LIMIT_SP": 7.5})
                out[user + "_read"] = len(await b.read_now())
        with pytest.raises(SecurityError, match="refused user op"):
            await OpcUaBridge(url, config.tags, config.opcua.namespace_uri,
                              security=ClientSecurity(pki=client_pki, username="op", password="wrong-password")).start()
        with pytest.raises(SecurityError, match="no endpoint with security None"):
            await OpcUaBridge(url, config.tags, config.opcua.namespace_uri,
                              security=ClientSecurity("None", "None", client_pki)).start()  # no None endpoint
    finally:
        await server.stop()
    return out


def test_roles_over_basic256sha256(config, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = asyncio.run(_roles_over_secure_channel(config, tmp_path, caplog))
    assert out["vic"].accepted == () and set(out["vic"].refused) == {"ADS.FEED.FLOW_SP", "ADS.BT_LIMIT_SP"}
    assert all("BadUserAccessDenied" in r for r in out["vic"].refused.values())
    assert out["op"].accepted == ("ADS.FEED.FLOW_SP",) and "BadUserAccessDenied" in out["op"].refused["ADS.BT_LIMIT_SP"]
    assert set(out["eng"].accepted) == {"ADS.FEED.FLOW_SP", "ADS.BT_LIMIT_SP"}
    assert out["vic_read"] == len(load_config().tags)  # a viewer reads everything
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("operator-pw-01", "engineer-pw-01", "viewer-pw-0001", "wrong-password"):
        assert secret not in logged  # passwords never reach the logs
