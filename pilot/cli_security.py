"""The client-security options every OPC UA client command shares (``pilot run`` towards the PLC,
``pilot opcua browse``, ``pilot alarms ...``), the same names as the environment variables of
compose and systemd, and ``client_security_or_fail``: the ``ClientSecurity`` they describe, or one
red line and exit 2.

The password is never a flag (it would show in ``ps``): it comes from ``PILOT_OPCUA_PASSWORD`` or
from the file named by ``--password-file`` / ``PILOT_OPCUA_PASSWORD_FILE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Optional

import typer

from opcua_server.client_security import (
    MODE_CHOICES,
    MODE_ENV,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    PKI_ENV,
    PLAINTEXT_ENV,
    POLICY_CHOICES,
    POLICY_ENV,
    USER_ENV,
    ClientSecurity,
)
from opcua_server.security import SecurityError

from .cli_common import fail

_PANEL = "OPC UA client security"

SecurityPolicyOpt = Annotated[str, typer.Option(
    "--security-policy", envvar=POLICY_ENV, metavar="[" + "|".join(POLICY_CHOICES) + "]",
    rich_help_panel=_PANEL,
    help="security policy; auto: the most secure the server offers")]
SecurityModeOpt = Annotated[str, typer.Option(
    "--security-mode", envvar=MODE_ENV, metavar="[" + "|".join(MODE_CHOICES) + "]", rich_help_panel=_PANEL,
    help="message security mode; auto: the most secure the server offers")]
PkiOpt = Annotated[Path, typer.Option(
    "--pki", envvar=PKI_ENV, rich_help_panel=_PANEL,
    help="PKI folder: own/cert.der, own/private/key.pem (created on first use), trusted/, rejected/")]
UserOpt = Annotated[Optional[str], typer.Option(
    "--user", envvar=USER_ENV, rich_help_panel=_PANEL,
    help=f"user name (default: anonymous); its password from {PASSWORD_ENV} or --password-file")]
PasswordFileOpt = Annotated[Optional[Path], typer.Option(
    "--password-file", envvar=PASSWORD_FILE_ENV, rich_help_panel=_PANEL,
    help="file holding the user's password (one line)")]
AllowPlaintextOpt = Annotated[bool, typer.Option(
    "--allow-plaintext-password", envvar=PLAINTEXT_ENV, rich_help_panel=_PANEL,
    help="allow the password to cross the wire readable (a None endpoint); closed test networks only")]
DEFAULT_PKI = Path("pki")


def _canonical(value: str, choices: tuple[str, ...], flag: str, env: str) -> str:
    by_lower = {c.lower(): c for c in choices}
    found = by_lower.get(value.strip().lower())
    if found is None:
        fail(f"{flag} / {env} {value!r} is not allowed: use one of {', '.join(choices)}")
    return found


def client_security_or_fail(policy: str = "auto", mode: str = "auto", pki: Path = DEFAULT_PKI,
                            user: Optional[str] = None, password_file: Optional[Path] = None,
                            allow_plaintext_password: bool = False,
                            environ: Mapping[str, str] | None = None) -> ClientSecurity:
    """The ``ClientSecurity`` of the command's options (the password from the environment or the
    password file), or one red line naming the option and what is allowed, and exit 2."""
    policy = _canonical(policy, POLICY_CHOICES, "--security-policy", POLICY_ENV)
    mode = _canonical(mode, MODE_CHOICES, "--security-mode", MODE_ENV)
    try:
        return ClientSecurity.from_env(environ, policy=policy, mode=mode, pki=pki, username=user or None,
                                       password_file=password_file,
                                       allow_plaintext_password=allow_plaintext_password)
    except SecurityError as exc:
        fail(str(exc))
