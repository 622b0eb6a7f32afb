"""README and docs stay true to the CLI: every `pilot ...` command they show parses (command,
sub-command, options and their types) against the real command tree."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pilot.cli import app

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?pilot ((?:[a-z][\w-]*)(?: [^`#&|;\n]*)?)")


def shell_blocks(text: str) -> list[str]:
    """The bodies of fenced bash/sh/console blocks (fences paired in order)."""
    blocks, body, lang = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, lang = [], line.strip()[3:].strip()
            else:
                if lang in ("bash", "sh", "console", "shell"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def shown_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in shell_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                line = line.strip().removeprefix("$ ")
                for m in COMMAND.finditer(line):
                    found.append((doc.name, m.group(1).strip()))
    return found


COMMANDS = shown_commands()


def test_docs_show_commands():
    assert len(COMMANDS) >= 5, COMMANDS  # the README alone shows more


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{c[:40]}" for d, c in COMMANDS])
def test_shown_command_parses(doc, command):
    """The command and every option exist (click parses all arguments before it acts on --help)."""
    args = [a for a in shlex.split(command) if not a.startswith(("$", "<", "[", "]"))]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"{doc}: `pilot {command}`: {result.output}"
