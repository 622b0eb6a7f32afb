"""``pilot opcua ...`` (browse a live server, create certificates) and ``plc_sim``, mounted by the
main CLI as ``pilot plc-sim``. Bad input ends with one red line and exit code 2, no traceback."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.console import Console

err = Console(stderr=True)
opcua_app = typer.Typer(help="OPC UA tools: browse a live server, create certificates.",
                        no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_endpoint(url: str) -> str:
    """opc.tcp://host:port[/path] or a clear error."""
    parsed = urlparse(url)
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
) -> None:
    """Walk a live OPC UA server and print a tag-map YAML fragment to start a config from.
    Credentials, if the server needs them, come from PILOT_OPCUA_USER / PILOT_OPCUA_PASSWORD."""
    from opcua_server.browse import browse
    from opcua_server.security import client_credentials_from_env

    check_endpoint(url)
    user, password = client_credentials_from_env()
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        text = asyncio.run(asyncio.wait_for(browse(url, namespace, timeout, user, password), timeout * 20))
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
    pki: Annotated[Path, typer.Option(help="PKI folder (own/, trusted/, rejected/)")] = Path("pki"),
    app_uri: Annotated[str, typer.Option(help="application URI written into the certificate")] = "urn:pilot-line:plc-sim",
    name: Annotated[str, typer.Option(help="certificate common name")] = "pilot-line",
    host: Annotated[list[str] | None, typer.Option(help="host names / IPs (repeatable)")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="validity, days")] = 365,
    overwrite: Annotated[bool, typer.Option(help="replace an existing certificate")] = False,
) -> None:
    """Create an application instance certificate and key (Basic256Sha256-capable, self-signed)."""
    from opcua_server.security import Pki, SecurityError, create_certificate

    if not app_uri.strip() or ":" not in app_uri:
        _fail(f"bad application URI {app_uri!r}: expected something like urn:site:app")
    try:
        cert = create_certificate(Pki(pki), app_uri, name, tuple(host or ("localhost", "127.0.0.1")), days, overwrite)
    except SecurityError as exc:
        _fail(f"{exc} (use --overwrite)")
    except OSError as exc:
        _fail(f"cannot write into {pki}: {exc.strerror}")
    err.print(f"certificate {cert}\nkey         {Pki(pki).key}\ntrust peers by copying their certificates into "
              f"{Pki(pki).trusted}/")


def _check_free(url: str) -> None:
    parsed = urlparse(url)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((parsed.hostname, parsed.port))
        except OSError as exc:
            _fail(f"cannot serve at {url}: {exc.strerror} (is another server running there?)")


def plc_sim(config_path: Path | None = None, endpoint: str | None = None, speed: float = 1.0, *,
            duration_s: float | None = None, pki: Path | None = None, security: str = "None",
            allow_anonymous: bool = True, seed: int | None = None) -> None:
    """Serve the config's tags from the twin in real time × ``speed`` (``pilot plc-sim``).
    ``security`` is a comma list of None, Sign, SignAndEncrypt; users come from PILOT_OPCUA_USERS /
    PILOT_OPCUA_SECRETS."""
    from opcua_server.plc_sim import run_plc_sim
    from opcua_server.security import SECURITY_MODES, SecurityError, UserDirectory
    from pilot_config import ConfigError, load_config

    if not speed > 0 or speed > 1e6:
        _fail(f"bad speed {speed}: it must be > 0 (1 = real time)")
    modes = tuple(m.strip() for m in security.split(",") if m.strip())
    unknown = [m for m in modes if m not in SECURITY_MODES]
    if unknown or not modes:
        _fail(f"unknown security mode(s) {unknown or security!r}: use a comma list of {', '.join(SECURITY_MODES)}")
    if any(m != "None" for m in modes) and pki is None:
        _fail("Sign / SignAndEncrypt need --pki DIR (create it with `pilot opcua certs --pki DIR`)")
    try:
        config = load_config(config_path)
        users = UserDirectory.from_env()
    except ConfigError as exc:
        _fail("the configuration has problems:\n  " + "\n  ".join(str(i) for i in exc.issues))
    except SecurityError as exc:
        _fail(str(exc))
    url = check_endpoint(endpoint or config.opcua.endpoint)
    _check_free(url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    try:
        asyncio.run(run_plc_sim(config, url, speed, seed=seed, pki=pki, security_modes=modes, users=users,
                                allow_anonymous=allow_anonymous, duration_s=duration_s))
    except KeyboardInterrupt:
        err.print("stopped")
    except SecurityError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve at {url}: {exc.strerror or exc}")
