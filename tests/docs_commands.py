"""The commands the documentation shows: every fenced block of README.md and docs/*.md, parsed.

A fence's info string says what it holds: `text` (output), `json` (data), `nginx` (web server
configuration), `python` (code), `crontab` (crontab lines, whose command is a shell command), and
none or `sh` (shell commands). In a shell block, continuation lines (ending in a backslash) are
joined, comments dropped, redirections removed, and each line is split at `&&`, `||`, `;`, `&` and
`|` into simple commands. Each simple command gets a kind from its first words; a line the check
does not know is kind "unknown", which tests/test_docs.py refuses.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import markdown_it

ROOT = Path(__file__).resolve().parents[1]
SHELL_INFOS = {"", "sh", "shell", "bash", "console"}
# Fences that hold no command: what a command prints, data, configuration of another program.
NOT_COMMANDS = {"text", "json", "nginx", "toml"}
KNOWN_INFOS = SHELL_INFOS | NOT_COMMANDS | {"python", "crontab"}

# Commands of the system, not edgeopt's: shown so that a reader can set something up, not run by the check.
SYSTEM_COMMANDS = {
    "apt-get": "installs a Debian package (root, network)",
    "pg_ctlcluster": "starts Debian's PostgreSQL cluster (root)",
    "runuser": "runs a PostgreSQL client as the postgres user (root)",
    "echo": "writes a line to a file of the user's (~/.pgpass)",
    "chmod": "changes a file's mode",
    "mkdir": "makes a folder",
    "curl": "an HTTP request: run against `edgeopt serve` by the run-for-real chain",
    "ray": "starts a Ray node",
}

_REDIRECTION = re.compile(r"\s+\d*(?:>>|>|<)&?\s*\S+")
_OPERATORS = {"&&", "||", ";", "&", "|"}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository: "README.md", "docs/fleet.md"
    line: int  # 1-based line of the opening fence
    info: str
    text: str


@dataclass(frozen=True)
class Command:
    """One simple command of a shell line, as the docs show it."""

    page: str
    line: int  # 1-based line of the shell line it is part of
    shell_line: str  # the whole logical line as shown (continuations joined), for a shell to run
    argv: tuple[str, ...]  # this command's words, environment assignments removed
    kind: str  # edgeopt, bench, pip, venv, pytest, lint, system, unknown

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def text(self) -> str:
        """The command as one normalised string (single spaces)."""
        return " ".join(self.argv)

    @property
    def edgeopt_args(self) -> list[str]:
        """The arguments after `edgeopt` (or `python -m edgeopt`)."""
        assert self.kind == "edgeopt"
        return list(self.argv[3:] if self.argv[1:2] == ("-m",) else self.argv[1:])


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@cache
def blocks() -> tuple[Block, ...]:
    found = []
    parser = markdown_it.MarkdownIt("commonmark")
    for path in pages():
        for token in parser.parse(path.read_text()):
            if token.type == "code_block":  # an indented block: the check cannot tell commands from output
                found.append(Block(str(path.relative_to(ROOT)), token.map[0] + 1, "(indented)", token.content))
            elif token.type == "fence":
                info = token.info.strip().split()[0] if token.info.strip() else ""
                found.append(Block(str(path.relative_to(ROOT)), token.map[0] + 1, info, token.content))
    return tuple(found)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(offset of the first line, line) with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(text.splitlines()):
        if not pending:
            start = offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append((start, pending + raw))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def split_commands(line: str) -> list[list[str]]:
    """The words of each simple command of a shell line (comment and redirections dropped)."""
    lexer = shlex.shlex(_REDIRECTION.sub("", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in _OPERATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def kind_of(argv: list[str]) -> str:
    program = argv[0]
    if program in ("edgeopt", ".venv/bin/edgeopt"):
        return "edgeopt"
    if re.fullmatch(r"(\.venv/bin/)?python(3(\.11)?)?", program) and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return {"edgeopt": "edgeopt", "pytest": "pytest", "venv": "venv"}.get(argv[2], "unknown")
        if argv[1].startswith("bench/") and argv[1].endswith(".py"):
            return "bench"
    if program in ("pip", "pip3", ".venv/bin/pip") and argv[1:2] == ["install"]:
        return "pip"
    if program in (".venv/bin/ruff", ".venv/bin/mypy", "ruff", "mypy"):
        return "lint"
    if program in SYSTEM_COMMANDS:
        return "system"
    return "unknown"


def _without_environment(argv: list[str]) -> list[str]:
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        argv = argv[1:]
    return argv


def commands_of(block: Block) -> list[Command]:
    found = []
    for offset, line in logical_lines(block.text):
        if block.info == "crontab":
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            line = line.split(maxsplit=5)[5]  # after minute, hour, day, month, weekday
        for words in split_commands(line):
            argv = _without_environment(words)
            if argv:
                found.append(Command(block.page, block.line + 1 + offset, line.strip(), tuple(argv), kind_of(argv)))
    return found


@cache
def all_commands() -> tuple[Command, ...]:
    return tuple(c for b in blocks() if b.info in SHELL_INFOS | {"crontab"} for c in commands_of(b))


def edgeopt_commands() -> list[Command]:
    return [c for c in all_commands() if c.kind == "edgeopt"]


def find(text: str) -> Command:
    """The first edgeopt command the docs show whose words are exactly `text`'s."""
    wanted = " ".join(shlex.split(text))
    for command in edgeopt_commands():
        if command.text == wanted:
            return command
    raise AssertionError(f"the docs no longer show `{text}`: update the run-for-real chain in tests/test_docs.py "
                         "to the command they show now")
