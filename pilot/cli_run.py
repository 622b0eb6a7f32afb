"""``pilot run``: the control loop live over OPC UA against the PLCs (or ``pilot plc-sim``), with
its operator server. See docs/control_loop.md and docs/security.md."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from .cli_security import (
    DEFAULT_PKI,
    AllowPlaintextOpt,
    PasswordFileOpt,
    PkiOpt,
    SecurityModeOpt,
    SecurityPolicyOpt,
    UserOpt,
    client_security_or_fail,
)
from .durations import duration_or_fail

err = Console(stderr=True)
out = Console()
_OPERATOR_PANEL = "Operator server (pilot alarms, HMI)"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_cmd(
    plc: Annotated[str, typer.Option("--plc", envvar="PILOT_OPCUA_ENDPOINT",
                                     help="OPC UA endpoint of the PLC (or of `pilot plc-sim`)")],
    config_path: Annotated[Optional[Path], typer.Argument(
        help="plant YAML file (default: $PILOT_CONFIG, else the shipped pilot_line.yaml)",
        show_default=False)] = None,
    mode: Annotated[str, typer.Option(help="mode of every control loop: manual, advisory or auto")] = "advisory",
    duration: Annotated[Optional[str], typer.Option(
        help="stop after this much plant time (10min, 8h); default: until Ctrl-C")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="folder for summary.json and the embedded history (unless PILOT_INFLUX_URL is set)")] = None,
    session: Annotated[str, typer.Option(
        help="live (may write to the PLC), training or standalone (refused against a live PLC)")] = "live",
    operator_endpoint: Annotated[str, typer.Option(
        "--operator-endpoint", envvar="PILOT_OPERATOR_ENDPOINT", rich_help_panel=_OPERATOR_PANEL,
        help="where to serve acknowledge/shelve methods and the .EST tags ('' to disable)")]
        = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: SecurityPolicyOpt = "auto",
    security_mode: SecurityModeOpt = "auto",
    pki: PkiOpt = DEFAULT_PKI,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    allow_plaintext_password: AllowPlaintextOpt = False,
    operator_security: Annotated[str, typer.Option(
        "--operator-security", envvar="PILOT_OPERATOR_SECURITY", rich_help_panel=_OPERATOR_PANEL,
        help="endpoints of the operator server: comma list of None, Sign, SignAndEncrypt or POLICY:MODE; "
             "secure: every policy with Sign and SignAndEncrypt (its certificate: the --pki folder)")] = "secure",
    anonymous: Annotated[Optional[bool], typer.Option(
        "--anonymous/--no-anonymous", rich_help_panel=_OPERATOR_PANEL, show_default=False,
        help="accept anonymous sessions on the operator server (they only read); default: "
             "PILOT_OPCUA_ANONYMOUS, else only when no users are configured")] = None,
    audit: Annotated[Optional[Path], typer.Option(
        "--audit", envvar="PILOT_AUDIT_JOURNAL", rich_help_panel=_OPERATOR_PANEL, show_default=False,
        help="journal of operator actions (JSON lines, 0600); default: OUT/audit.jsonl, else ./audit.jsonl")]
        = None,
) -> None:
    """Run estimators, MPC, guard and alarms live against PLCs over OPC UA.

    Reads the PLC through the bridge, steps the loop every control period of plant time, writes the
    guarded setpoints (auto loops) and reports every refused write; records process tags,
    estimates, decisions and alarms into the historian. Operators acknowledge and shelve with
    `pilot alarms` while it runs, logged in to the operator server (secured, same users and roles
    as the PLC face); every action, refused ones too, goes into the audit journal. The PLC connection uses the most secure endpoint the PLC offers
    and checks its certificate against the PKI folder's trust list; writes need a user with the
    operator role (--user, the password from PILOT_OPCUA_PASSWORD or --password-file).
    """
    from asyncua import ua

    from controllers.guard import LiveWriteForbidden
    from opcua_server.audit import AuditError
    from opcua_server.bridge import LinkDown
    from opcua_server.security import SecurityError

    from .cli_common import load_or_fail
    from .cli_opcua import check_endpoint
    from .live import run_live
    from .secrets import check_secrets_or_fail

    check_secrets_or_fail(_fail)  # example passwords and tokens, the user store's password policy
    check_endpoint(plc)
    if operator_endpoint:
        check_endpoint(operator_endpoint)
    if mode not in ("manual", "advisory", "auto"):
        _fail(f"--mode must be manual, advisory or auto (got {mode!r})")
    if session not in ("live", "training", "standalone"):
        _fail(f"--session must be live, training or standalone (got {session!r})")
    duration_s = duration_or_fail(duration, _fail)
    security = client_security_or_fail(security_policy, security_mode, pki, user, password_file,
                                       allow_plaintext_password)
    op_security = _operator_security_or_fail(operator_security, pki, anonymous) if operator_endpoint else None
    config = load_or_fail(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # the bridge reports the link itself

    def show(tick, result) -> None:
        refused = len(result.refused) if result else 0
        err.print(f"t={tick.t:.0f}  writes {len(tick.writes)}  advisory {len(tick.advisory)}  held {len(tick.held)}"
                  f"  refused {refused}  alarms {len(tick.active_alarms)}  {tick.latency_s * 1e3:.0f} ms",
                  highlight=False)

    try:
        res = asyncio.run(run_live(config, plc, mode=mode, duration_s=duration_s, out_dir=out_dir,
                                   session=session, target="live", bridge_options={"security": security},
                                   operator_endpoint=operator_endpoint or None, operator_security=op_security,
                                   audit_path=audit, on_tick=show))
    except (LiveWriteForbidden, AuditError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        return
    except SecurityError as exc:
        _fail(str(exc))
    except OSError as exc:  # TimeoutError included
        _fail(f"cannot reach {plc}: {exc or type(exc).__name__}")
    except LinkDown as exc:
        _fail(str(exc))
    except ua.UaError as exc:  # a status the PLC answered outside the security checks
        code = getattr(exc, "code", None)
        _fail(f"{plc} answered {ua.StatusCode(code).name if code is not None else exc}")
    lat = res.stats["tick_latency_ms"]
    out.print(f"{res.ticks} ticks; {res.stats['writes_accepted']} writes accepted, {len(res.refused)} refused; "
              f"{res.stats['alarms_raised']} alarms raised; tick p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    for t, tag, value, reason in res.refused[:20]:
        out.print(f"  refused t={t:.0f} {tag} = {value:g}: {reason}", highlight=False)
    if res.summary_path:
        out.print(f"summary: {res.summary_path}")


def _operator_security_or_fail(spec: str, pki: Path, anonymous: bool | None):
    """The operator server's ``ServerSecurity`` (endpoints of ``spec``; users and PKI as every
    server face has them), or one red line."""
    from opcua_server.security import SecurityError
    from opcua_server.server_security import parse_endpoints, server_security_from_env

    try:
        parse_endpoints(spec)
    except SecurityError as exc:
        _fail(f"--operator-security / PILOT_OPERATOR_SECURITY: {exc}")
    try:
        return server_security_from_env(spec=spec, pki=pki, allow_anonymous=anonymous)
    except SecurityError as exc:
        _fail(str(exc))
