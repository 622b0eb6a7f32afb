"""Secrets hygiene: example secrets refused (naming the variable, never the value), credentials
redacted from every URL shown, process data and keys in files owner-only from creation, and the
deploy (compose, systemd) secured by default."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from asyncua import Client, ua
from typer.testing import CliRunner

from opcua_server.node_interop import free_port
from pilot.cli import app
from pilot.historian.base import Point, SinkError
from pilot.historian.influx1 import HttpEndpoint, Influx1Sink
from pilot.historian.spool import Spool
from pilot.historian.sqlite import SqliteSink, history_path
from pilot.secrets import (
    SecretsError,
    private_dir,
    redact_text,
    redact_url,
    refuse_example_secrets,
    secret_problems,
    write_private_text,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
GOOD = "a-long-enough-secret-42"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def open_umask():
    """Files must be private because of how they are created, not because of the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- example secrets and the password policy ---------------------------------------------------
def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
             if re.match(r"^[A-Z_]+=", line))
    return {k: v for k, v in pairs}


def test_every_example_secret_of_the_deploy_is_refused_by_name_not_value():
    env = {**env_example(), "PILOT_OPCUA_SECRETS": str(DEPLOY / "secrets.example/opcua-users"),
           "PILOT_OPCUA_PASSWORD_FILE": str(DEPLOY / "secrets.example/opcua-bridge-password")}
    examples = {k: v for k, v in env.items() if "change-me" in v}
    assert {"PILOT_INFLUX_TOKEN", "PILOT_INFLUX_ADMIN_PASSWORD", "PILOT_GRAFANA_ADMIN_PASSWORD"} <= set(examples)
    problems = secret_problems(env)
    for name in [*examples, "PILOT_OPCUA_PASSWORD_FILE"]:
        assert any(p.startswith(f"{name} holds an example value") for p in problems), name
    users = [p for p in problems if "(PILOT_OPCUA_SECRETS), entry" in p]
    assert [re.search(r"user '(\w+)'", p)[1] for p in users] == ["bridge", "operator1", "engineer1", "viewer1"]
    from opcua_server.users import UserDirectory

    example_users = UserDirectory.parse((DEPLOY / "secrets.example/opcua-users").read_text(), "example")
    assert example_users.names() == ["bridge", "engineer1", "operator1", "viewer1"]  # the servers read it
    values = [*examples.values(), *re.findall(r"change-me[\w-]*", (DEPLOY / "secrets.example/opcua-users").read_text())]
    assert not any(v in p for v in values for p in problems), "a secret value appears in a message"


def test_user_store_example_and_short_passwords_refused_with_entry_and_user():
    env = {"PILOT_OPCUA_USERS": f"op1:operator:{GOOD};eng:engineer:change-me-engineer;view:viewer:short"}
    problems = secret_problems(env)
    assert problems == [
        "PILOT_OPCUA_USERS, entry 2 (user 'eng'): the password is an example value (it contains 'change-me'): "
        "set a password of your own",
        "PILOT_OPCUA_USERS, entry 3 (user 'view'): the password is shorter than 12 characters "
        "(PILOT_OPCUA_MIN_PASSWORD_LENGTH)"]
    assert secret_problems({**env, "PILOT_OPCUA_MIN_PASSWORD_LENGTH": "4"})[1:] == []
    assert "whole number" in secret_problems({"PILOT_OPCUA_MIN_PASSWORD_LENGTH": "twelve"})[0]


def test_secrets_in_files_are_checked_too(tmp_path):
    (tmp_path / "users").write_text(f"# users\nop1:operator:{GOOD}\neng:engineer:Change-Me-Now-Please\n")
    (tmp_path / "password").write_text("change-me-bridge-password\n")
    env = {"PILOT_OPCUA_SECRETS": str(tmp_path / "users"), "PILOT_OPCUA_PASSWORD_FILE": str(tmp_path / "password"),
           "PILOT_INFLUX_TOKEN_FILE": str(tmp_path / "absent")}
    problems = secret_problems(env)
    assert len(problems) == 3
    assert problems[0].startswith("PILOT_INFLUX_TOKEN_FILE names ") and "cannot be read" in problems[0]
    assert problems[1].startswith("PILOT_OPCUA_PASSWORD_FILE holds an example value")
    assert problems[2].startswith(f"{tmp_path / 'users'} (PILOT_OPCUA_SECRETS), entry 3 (user 'eng')")
    with pytest.raises(SecretsError) as info:
        refuse_example_secrets(env)
    assert "change-me-bridge" not in str(info.value) and "Change-Me-Now" not in str(info.value)


def test_good_secrets_flags_and_empty_values_pass():
    assert secret_problems({"PILOT_INFLUX_TOKEN": GOOD, "PILOT_OPCUA_PASSWORD": GOOD, "PILOT_GRAFANA_TOKEN": "",
                            "PILOT_OPCUA_ALLOW_PLAINTEXT_PASSWORD": "1", "PILOT_OPCUA_USERS": f"op:operator:{GOOD}",
                            "OTHER_PASSWORD": "change-me"}) == []


@pytest.mark.parametrize("argv", [["plc-sim", "--endpoint", "opc.tcp://127.0.0.1:{port}"],
                                  ["run", "--plc", "opc.tcp://127.0.0.1:{port}", "--duration", "1min"]],
                         ids=["plc-sim", "run"])
def test_cli_refuses_to_start_with_example_secrets(argv, tmp_path):
    port = free_port()
    env = {"PILOT_GRAFANA_ADMIN_PASSWORD": "change-me", "PILOT_OPCUA_USERS": "eng:engineer:tiny",
           "PILOT_HISTORIAN_SPOOL": str(tmp_path / "spool.sqlite")}
    result = CliRunner().invoke(app, [a.format(port=port) for a in argv], env=env)
    assert result.exit_code == 2, result.output
    assert "PILOT_GRAFANA_ADMIN_PASSWORD holds an example value" in result.output
    assert "PILOT_OPCUA_USERS, entry 1 (user 'eng'): the password is shorter than 12" in result.output
    assert "tiny" not in result.output and "Traceback" not in result.output


def test_container_entry_point_checks_then_runs_the_command():
    run = [sys.executable, "-m", "pilot.secrets", sys.executable, "-c", "print('started')"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    ok = subprocess.run(run, env={**env, "PILOT_INFLUX_TOKEN": GOOD}, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "started", ok.stderr
    bad = subprocess.run(run, env={**env, "PILOT_INFLUX_TOKEN": "change-me-long-random-token"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "started" not in bad.stdout
    assert bad.stderr.strip() == ("error: refusing to start: PILOT_INFLUX_TOKEN holds an example value "
                                  "(it contains 'change-me'): set a secret of your own")


# -- redaction -----------------------------------------------------------------------------
def test_redact_url_hides_passwords_and_tokens():
    assert redact_url("http://u:p4ss@influx:8086/x?db=pilot&token=abc&p=pw&u=me") == \
        "http://u:***@influx:8086/x?db=pilot&token=***&p=***&u=me"
    assert redact_url("https://admin@grafana:3000") == "https://admin@grafana:3000"
    assert redact_url("opc.tcp://op1:secret-pw@plc:4840") == "opc.tcp://op1:***@plc:4840"
    assert redact_url("http://influx:8086") == "http://influx:8086"
    text = redact_text("InfluxDB at http://u:p4ss@h:1?api_key=k3y unreachable: refused")
    assert text == "InfluxDB at http://u:***@h:1?api_key=*** unreachable: refused"


def test_historian_status_never_prints_credentials(tmp_path):
    port = free_port()
    url = f"http://reader:pa55-w0rd-xyz@127.0.0.1:{port}/?token=t0ken-abc-123&db=pilot"
    env = {"PILOT_INFLUX_URL": url, "PILOT_INFLUX_VERSION": "1", "PILOT_HISTORIAN_SPOOL": str(tmp_path / "s.sqlite")}
    result = CliRunner().invoke(app, ["historian", "status"], env=env)
    assert result.exit_code == 1, result.output  # nothing answers on the port
    assert f"http://reader:***@127.0.0.1:{port}/?token=***&db=pilot" in result.output
    assert "pa55-w0rd" not in result.output and "t0ken-abc" not in result.output


def test_sink_errors_show_the_url_redacted_and_url_credentials_are_sent_as_basic():
    port = free_port()
    sink = Influx1Sink(url=f"http://writer:pa55-w0rd-xyz@127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(SinkError) as info:
        sink.write_batch([Point("process", "T", "u", 1.0, 1.0)])
    assert "writer:***@" in str(info.value) and "pa55-w0rd" not in str(info.value)
    headers = HttpEndpoint("http://w%40site:p%3Ass@h:1", 1).headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"w@site:p:ss").decode()
    assert "pa55-w0rd" not in repr(sink.settings)


# -- owner-only files ------------------------------------------------------------------------
def test_simulate_run_folder_history_and_summary_are_owner_only(tmp_path, open_umask):
    from pilot.app import simulate
    from pilot_config import load_config

    out = tmp_path / "runs" / "r1"
    simulate(load_config(), 600.0, out, make_plots=False)
    assert mode(out) == 0o700
    assert mode(history_path(out)) == 0o600 and mode(out / "summary.json") == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    assert mode(private_dir(shared)) == 0o755  # an existing folder keeps the owner's choice


def test_history_wal_shm_and_spool_are_owner_only_from_creation(tmp_path, open_umask):
    sink = SqliteSink(tmp_path / "live" / "history.sqlite")
    sink.open()
    sink.write_batch([Point("process", "T", "u", 1.0, 1.0)])
    files = sorted((tmp_path / "live").iterdir())
    assert [f.name for f in files] == ["history.sqlite", "history.sqlite-shm", "history.sqlite-wal"]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    sink.close()
    spool = Spool(tmp_path / "state" / "pilot" / "spool.sqlite")
    spool.append([Point("process", "T", "u", 1.0, 1.0)])
    assert mode(tmp_path / "state" / "pilot") == 0o700
    assert {f.name: mode(f) for f in (tmp_path / "state" / "pilot").iterdir()} == \
        {n: 0o600 for n in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm")}
    spool.close()
    old = tmp_path / "old.json"
    old.write_text("{}")
    old.chmod(0o644)
    assert mode(write_private_text(old, "{}")) == 0o600


# -- the deploy runs secured by default ------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def service_env(svc: dict) -> dict:
    env = svc.get("environment", {})
    return dict(e.split("=", 1) for e in env) if isinstance(env, list) else env


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def encrypted_only(spec: str) -> bool:
    from opcua_server.server_security import parse_endpoints

    endpoints = parse_endpoints(spec)
    return bool(endpoints) and all(mode == "SignAndEncrypt" for _, mode in endpoints)


def test_compose_runs_secured_by_default():
    services = compose()["services"]
    plc, bridge, init = services["plc-sim"], services["bridge"], services["pki-init"]
    cmd = next(c for c in deploy_commands() if c[1] == "plc-sim")
    assert encrypted_only(option(cmd, "--security")) and "--no-anonymous" in cmd and option(cmd, "--pki")
    assert service_env(plc)["PILOT_OPCUA_SECRETS"].startswith("/run/pilot-secrets/")
    benv = service_env(bridge)
    assert re.fullmatch(r"\$\{PILOT_OPCUA_SECURITY_MODE:-SignAndEncrypt\}", benv["PILOT_OPCUA_SECURITY_MODE"])
    assert re.fullmatch(r"\$\{PILOT_OPERATOR_SECURITY:-secure\}", benv["PILOT_OPERATOR_SECURITY"])
    assert benv["PILOT_OPCUA_PKI"] and benv["PILOT_OPCUA_USER"] and benv["PILOT_AUDIT_JOURNAL"]
    assert "PILOT_OPCUA_PASSWORD" not in benv  # the password comes from a file
    assert benv["PILOT_OPCUA_PASSWORD_FILE"].startswith("/run/pilot-secrets/")
    for name in ("plc-sim", "bridge", "influxdb", "grafana"):
        assert services[name]["depends_on"]["pki-init"]["condition"] == "service_completed_successfully", name
    assert init["entrypoint"] == ["python", "-m", "pilot.secrets"]
    assert {k for k in service_env(init) if k.endswith(("PASSWORD", "TOKEN"))} == {
        "PILOT_INFLUX_TOKEN", "PILOT_INFLUX_ADMIN_PASSWORD", "PILOT_GRAFANA_ADMIN_PASSWORD", "PILOT_GRAFANA_TOKEN"}
    assert {s["file"] for s in compose()["secrets"].values()} == {
        "./secrets/opcua-users", "./secrets/opcua-bridge-password"}
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split()


def test_systemd_units_run_secured_by_default():
    plc = (DEPLOY / "systemd/pilot-plc-sim.service").read_text()
    bridge = (DEPLOY / "systemd/pilot-bridge.service").read_text()
    cmd = next(c for c in deploy_commands() if c[1] == "plc-sim" and not any("0.0.0.0" in x for x in c))
    assert encrypted_only(option(cmd, "--security")) and "--no-anonymous" in cmd and option(cmd, "--pki")
    for unit in (plc, bridge):
        assert re.search(r"^ExecStartPre=\S+ -m pilot\.secrets$", unit, re.M)
        assert re.search(r"^ExecStartPre=.*pki-init\.sh own ", unit, re.M)
        assert "UMask=0077" in unit and "StateDirectoryMode=0700" in unit
        assert "LoadCredential=opcua-users:/etc/pilot/opcua-users" in unit
    assert re.search(r"^ExecStartPre=.*pki-init\.sh cross ", plc, re.M)
    assert "Environment=PILOT_OPERATOR_SECURITY=secure" in bridge
    assert "Environment=PILOT_OPCUA_PASSWORD_FILE=%d/opcua-bridge-password" in bridge
    assert "PILOT_OPCUA_SECURITY_MODE=SignAndEncrypt" in (DEPLOY / "env.example").read_text()


def test_pki_init_creates_certificates_once_and_cross_trusts(tmp_path, open_umask):
    from cryptography.x509 import load_der_x509_certificate as _load_cert

    from opcua_server.security import Pki, TrustList

    script = ["sh", str(DEPLOY / "pki-init.sh")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    plc, bridge = tmp_path / "pki" / "plc-sim", tmp_path / "pki" / "bridge"
    for pki, uri in ((plc, "urn:pilot-line:plc-sim"), (bridge, "urn:pilot-line:bridge")):
        subprocess.run([*script, "own", str(pki), uri, pki.name, "localhost", "127.0.0.1"], env=env, check=True,
                       capture_output=True, timeout=120)
    first = (plc / "own/cert.der").read_bytes()
    again = subprocess.run([*script, "own", str(plc), "urn:pilot-line:plc-sim", "plc-sim", "localhost"], env=env,
                           check=True, capture_output=True, text=True, timeout=120)
    assert "exists, kept" in again.stdout and (plc / "own/cert.der").read_bytes() == first
    subprocess.run([*script, "cross", str(plc), str(bridge)], env=env, check=True, capture_output=True, timeout=60)
    plc_cert = _load_cert(first)
    assert TrustList(Pki(bridge), "server", host="localhost").check(plc_cert, "urn:pilot-line:plc-sim") is None
    refusal = TrustList(Pki(bridge), "server").check(plc_cert, "urn:pilot-line:other")
    assert refusal is not None  # the ApplicationUri is still checked
    bridge_cert = _load_cert((bridge / "own/cert.der").read_bytes())
    assert TrustList(Pki(plc), "client").check(bridge_cert, "urn:pilot-line:bridge") is None
    assert mode(plc / "own/private/key.pem") == 0o600 and mode(plc) == 0o700


def deploy_commands() -> list[list[str]]:
    """The `pilot ...` command lines the compose file and the units run, ``${VAR:-default}`` and
    ``${VAR}`` (from the unit's Environment= lines) filled in."""
    cmds = [[re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in svc["command"]]
            for svc in compose()["services"].values()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["pilot"]]
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text()
        env = dict(re.findall(r"^Environment=(\w+)=(.*)$", text, re.M))
        for m in re.finditer(r"^ExecStart=\S*/pilot (.*)$", text, re.M):
            line = re.sub(r"\$\{(\w+)\}", lambda v: env[v[1]], m.group(1))
            cmds.append(["pilot", *shlex.split(line)])
    return cmds


def test_deploy_commands_parse_against_the_cli():
    cmds = deploy_commands()
    assert len(cmds) == 4
    for cmd in cmds:
        assert not any("$" in a for a in cmd), cmd
        result = CliRunner().invoke(app, [*cmd[1:], "--help"])
        assert result.exit_code == 0, f"{cmd}: {result.output}"


def test_deploy_settings_run_a_secured_line_end_to_end(tmp_path):
    """The systemd units' settings on one PC: pki-init, the simulated PLC with the deploy's
    endpoints, users file and no anonymous, `pilot run` SignAndEncrypt as `bridge` with its
    password from a file; the loop ticks, and the PLC offers no endpoint below SignAndEncrypt."""
    unit = (DEPLOY / "systemd/pilot-plc-sim.service").read_text()
    spec = re.search(r"^Environment=PILOT_OPCUA_SERVER_SECURITY=(\S+)$", unit, re.M)[1]
    mode_pin = re.search(r"^PILOT_OPCUA_SECURITY_MODE=(\S+)$", (DEPLOY / "env.example").read_text(), re.M)[1]
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    pki = {name: tmp_path / "pki" / name for name in ("plc-sim", "bridge")}
    for name, path in pki.items():
        subprocess.run(["sh", str(DEPLOY / "pki-init.sh"), "own", str(path), f"urn:pilot-line:{name}", name,
                        "localhost", "127.0.0.1"], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run(["sh", str(DEPLOY / "pki-init.sh"), "cross", str(pki["plc-sim"]), str(pki["bridge"])], env=env,
                   check=True, capture_output=True, timeout=60)
    users = write_private_text(tmp_path / "opcua-users", f"bridge:operator:{GOOD}\nviewer1:viewer:{GOOD}-v\n")
    password = write_private_text(tmp_path / "opcua-bridge-password", GOOD + "\n")
    env["PILOT_OPCUA_SECRETS"] = str(users)
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    plc = subprocess.Popen([str(bin_dir / "pilot"), "plc-sim", "--endpoint", url, "--security", spec, "--pki",
                            str(pki["plc-sim"]), "--no-anonymous", "--speed", "60", "--duration", "30min"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in plc.stderr:  # the server says when it serves
            if "serving" in line:
                break
        else:
            raise AssertionError(f"plc-sim ended: rc {plc.wait()}")
        offered = asyncio.run(Client(url).connect_and_get_server_endpoints())
        assert {e.SecurityMode for e in offered} == {ua.MessageSecurityMode.SignAndEncrypt}
        assert all(t.TokenType != ua.UserTokenType.Anonymous for e in offered for t in e.UserIdentityTokens)
        run = subprocess.run([str(bin_dir / "pilot"), "run", "--plc", url, "--security-mode", mode_pin, "--pki",
                              str(pki["bridge"]), "--user", "bridge", "--password-file", str(password),
                              "--operator-endpoint", f"opc.tcp://127.0.0.1:{free_port()}", "--operator-security",
                              "secure", "--audit", str(tmp_path / "audit.jsonl"), "--duration", "3min"],
                             env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    finally:
        plc.terminate()
        plc.wait(30)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"connected to \S+ \(\w+/SignAndEncrypt, user bridge\)", run.stderr), run.stderr[-3000:]
    assert re.search(r"^\d+ ticks;", run.stdout, re.M), run.stdout
    assert GOOD not in run.stdout + run.stderr
