"""``pilot opcua ...`` (browse a live server, create certificates) and ``plc_sim``, mounted by the
main CLI as ``pilot plc-sim``. Bad input ends with one red line and exit code 2, no traceback."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlparse

import typer
from rich.console import Console

from . import cli_security as sec
from .cli_common import fail as _fail

err = Console(stderr=True)
opcua_app = typer.Typer(help="OPC UA tools: browse a live server, create certificates.",
                        no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def check_endpoint(url: str) -> str:
    """opc.tcp://host:port[/path] or a clear error."""
    parsed = urlparse(url)
    if "@" in parsed.netloc:  # never echo it: it would print the password
        _fail("credentials do not belong in an endpoint URL (it is logged and shown): give the user "
              "with --user / PILOT_OPCUA_USER and the password with PILOT_OPCUA_PASSWORD or --password-file")
    if parsed.scheme != "opc.tcp" or not parsed.hostname:
        _fail(f"bad endpoint {url!r}: expected opc.tcp://HOST:PORT, e.g. opc.tcp://127.0.0.1:4840")
    try:
        port = parsed.port
    except ValueError:
        port = None
        _fail(f"bad endpoint {url!r}: the port must be a number between 1 and 65535")
    if port is None:
        _fail(f"bad endpoint {url!r}: give the port, e.g. opc.tcp://{parsed.hostname}:4840")
    return url


@opcua_app.command("browse")
def browse_cmd(
    url: Annotated[str, typer.Argument(help="server endpoint, e.g. opc.tcp://127.0.0.1:4840")],
    namespace: Annotated[str | None, typer.Option(help="namespace URI to list (default: the largest)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here")] = None,
    timeout: Annotated[float, typer.Option(min=0.5, max=120, help="request timeout, seconds")] = 5.0,
    security_policy: sec.SecurityPolicyOpt = "auto",
    security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = Path("pki"),
    user: sec.UserOpt = None,
    password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
) -> None:
    """Walk a live OPC UA server and print a tag-map YAML fragment to start a config from.
    Connects to the most secure endpoint the server offers (see the security options)."""
    from opcua_server.browse import browse
    from opcua_server.security import SecurityError

    check_endpoint(url)
    security = sec.client_security_or_fail(security_policy, security_mode, pki, user, password_file,
                                       allow_plaintext_password)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        text = asyncio.run(asyncio.wait_for(browse(url, namespace, timeout, security), timeout * 20))
    except SecurityError as exc:
        _fail(str(exc))
    except (TimeoutError, OSError, ConnectionError) as exc:
        _fail(f"cannot reach {url}: {exc or type(exc).__name__}")
    except ValueError as exc:
        _fail(str(exc))
    except Exception as exc:  # an OPC UA status from the server
        _fail(f"{url} answered with an error: {type(exc).__name__} {exc}")
    if output:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@opcua_app.command("certs")
def certs_cmd(
    pki: Annotated[Path, typer.Option(envvar="PILOT_OPCUA_PKI", help="PKI folder (own/, trusted/, rejected/)")] = Path("pki"),
    app_uri: Annotated[Optional[str], typer.Option(
        help="application URI written into the certificate (default: urn:HOST:pilot-line, as a certificate "
             "created on first use)", show_default=False)] = None,
    name: Annotated[str, typer.Option(help="certificate common name")] = "pilot-line",
    host: Annotated[list[str] | None, typer.Option(help="host names / IPs (repeatable)")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="validity, days")] = 365,
    overwrite: Annotated[bool, typer.Option(help="replace an existing certificate")] = False,
) -> None:
    """Create an application instance certificate and key (self-signed, 2048-bit RSA, SHA-256: every
    policy Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; server and client use)."""
    from cryptography import x509

    from opcua_server.security import (
        Pki,
        SecurityError,
        create_certificate,
        default_app_uri,
        fingerprint,
    )

    app_uri = default_app_uri() if app_uri is None else app_uri
    if not app_uri.strip() or ":" not in app_uri:
        _fail(f"bad application URI {app_uri!r}: expected something like urn:site:app")
    try:
        cert = create_certificate(Pki(pki), app_uri, name, tuple(host or ("localhost", "127.0.0.1")), days, overwrite)
    except SecurityError as exc:
        _fail(f"{exc} (use --overwrite)")
    except OSError as exc:
        _fail(f"cannot write into {pki}: {exc.strerror}")
    sha = fingerprint(x509.load_der_x509_certificate(cert.read_bytes()))
    err.print(f"certificate {cert} (SHA-256 {sha})\nkey         {Pki(pki).key}\ntrust peers by copying their "
              f"certificates into {Pki(pki).trusted}/; peers trust this one by copying {cert} into theirs")


def _check_free(url: str) -> None:
    parsed = urlparse(url)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((parsed.hostname, parsed.port))
        except OSError as exc:
            _fail(f"cannot serve at {url}: {exc.strerror} (is another server running there?)")


SERVER_SECURITY_HELP = ("endpoints: comma list of None, Sign, SignAndEncrypt (Basic256Sha256), POLICY:MODE "
                        "(POLICY Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss; MODE Sign or "
                        "SignAndEncrypt), or secure (every policy, both modes)")
ServerSecurityOpt = Annotated[Optional[str], typer.Option(
    "--security", envvar="PILOT_OPCUA_SERVER_SECURITY", show_default=False,
    help=SERVER_SECURITY_HELP + "; default None (quick start)")]
ServerPkiOpt = Annotated[Optional[Path], typer.Option(
    "--pki", envvar="PILOT_OPCUA_PKI", show_default=False,
    help="PKI folder: own/ certificate and key (created on first start), trusted/ client certificates, "
         "rejected/ (default: pki when an endpoint is secure)")]
AnonymousOpt = Annotated[Optional[bool], typer.Option(
    "--anonymous/--no-anonymous", show_default=False,
    help="accept anonymous sessions (they may only read); default (and PILOT_OPCUA_ANONYMOUS=auto): only "
         "when no users are configured")]


StepOpt = Annotated[str, typer.Option(
    "--step", help="the twin's synchronisation step: sync (simulation.sync_step_s, 60 s: what `pilot simulate` "
                   "runs), serve (simulation.serve_step_s, 1 s: every tag refreshed each plant second, for a "
                   "trainee; a served twin then keeps up with --speed up to ~100), or plant seconds 1..600")]


def step_or_fail(text: str, config) -> float:
    """The synchronisation step an option names (``StepOpt``), or one red line and exit 2."""
    if text == "sync":
        return config.simulation.sync_step_s
    if text == "serve":
        return config.simulation.serve_step_s
    try:
        value = float(text.rstrip("s"))
    except ValueError:
        value = math.nan
    if not 1 <= value <= 600:
        _fail(f"--step must be sync, serve or a number of plant seconds 1..600; got {text!r}")
    return value


def server_security_or_fail(spec: str | None, pki: Path | None, anonymous: bool | None, *,
                            flag: str = "--security", env: str = "PILOT_OPCUA_SERVER_SECURITY",
                            default: str = "None"):
    """The ``ServerSecurity`` of a server command's options and the environment (users, anonymous
    access), or one red line naming the option or variable and what is allowed, and exit 2."""
    from opcua_server.security import SecurityError
    from opcua_server.server_security import parse_endpoints, server_security_from_env

    try:
        parse_endpoints(spec if spec is not None else os.environ.get(env) or default)
    except SecurityError as exc:
        _fail(f"{flag} / {env}: {exc}")
    try:
        security = server_security_from_env(spec=spec, pki=pki, allow_anonymous=anonymous, spec_env=env,
                                            default_spec=default)
        security.check()
    except SecurityError as exc:
        _fail(str(exc))
    return security


def parse_endpoint_overrides(values: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--endpoint`` values: a bare URL and/or NAME=URL pairs -> (url, {name: url}), each URL
    checked; a repeated name or a second bare URL is one red line."""
    bare, named = None, {}
    for value in values or ():
        name, sep, url = value.partition("=")
        if not sep or name.startswith("opc.tcp:"):
            if bare is not None:
                _fail(f"--endpoint {value!r}: one bare URL at most; give NAME=URL for each PLC")
            bare = check_endpoint(value)
            continue
        name = name.strip()
        if name in named:
            _fail(f"--endpoint: PLC {name!r} is given twice")
        named[name] = check_endpoint(url.strip())
    return bare, named


def _serve_plan_or_fail(config, plcs: list[str], endpoint: str | None, endpoints: dict[str, str]):
    from opcua_server.plc_sim import serve_plan

    try:
        plan = serve_plan(config, plcs, endpoints, endpoint)
    except ValueError as exc:
        _fail(str(exc))
    seen: dict = {}
    for p in plan:
        parsed = urlparse(p.endpoint)
        key = ((parsed.hostname or "").lower(), parsed.port)
        if key in seen:
            _fail(f"PLCs {seen[key]} and {p.name} would both listen at {p.endpoint}: give each its own "
                  "port (--endpoint NAME=URL)")
        seen[key] = p.name
        _check_free(p.endpoint)
    return plan


def plc_sim(config_path: Path | None = None, endpoint: str | list[str] | None = None, speed: float = 1.0, *,
            duration_s: float | None = None, pki: Path | None = None, security: str | None = None,
            allow_anonymous: bool | None = None, seed: int | None = None, plcs: list[str] | None = None,
            step: str = "sync") -> None:
    """Serve the config's PLCs from one twin in real time × ``speed`` (``pilot plc-sim``): every PLC
    of the config, or only ``plcs``; ``endpoint``: a bare URL (every tag on one server, or the one
    PLC named) and/or NAME=URL overrides. ``security``: the endpoints (``server_security.parse_endpoints``;
    default PILOT_OPCUA_SERVER_SECURITY, else None); users come from PILOT_OPCUA_USERS /
    PILOT_OPCUA_SECRETS; ``allow_anonymous`` None: PILOT_OPCUA_ANONYMOUS, else only when no users are
    configured. The same security for every server. ``step``: the twin's synchronisation step
    (``step_or_fail``: sync, serve or seconds)."""
    from opcua_server.plc_sim import run_plc_sim
    from opcua_server.security import SecurityError
    from pilot_config import ConfigError, load_config

    from .secrets import check_secrets_or_fail

    check_secrets_or_fail(_fail)  # example passwords and tokens, the user store's password policy
    if not speed > 0 or speed > 1e6:
        _fail(f"bad speed {speed}: it must be > 0 (1 = real time)")
    bare, named = parse_endpoint_overrides([endpoint] if isinstance(endpoint, str) else endpoint)
    server_security = server_security_or_fail(security, pki, allow_anonymous)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail("the configuration has problems:\n  " + "\n  ".join(str(i) for i in exc.issues))
    config = config.served(step_or_fail(step, config)) if step != "sync" else config
    plan = _serve_plan_or_fail(config, list(plcs or ()), bare, named)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    where = ", ".join(f"{p.name} {p.endpoint}" for p in plan)
    try:
        asyncio.run(run_plc_sim(config, bare, speed, seed=seed, security=server_security, duration_s=duration_s,
                                plcs=list(plcs or ()), endpoints=named))
    except KeyboardInterrupt:
        err.print("stopped")
    except SecurityError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve at {where}: {exc.strerror or exc}")
