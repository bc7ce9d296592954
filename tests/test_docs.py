"""The docs check: every command that README.md and docs/*.md show is exercised, so none goes stale.

Fast part, every fenced command (tests/docs_commands.py parses them):
- `edgeopt ...`: parsed by edgeopt's own command line (the click command typer builds), which stops
  before any work: the subcommand exists, every option exists, every value parses (type, range, choice);
- `python bench/X.py ...`: the script exists, `--help` runs, and every option used is in its help;
- `pip install ...`: every extra named is one of pyproject.toml's, the constraints file exists;
- `python -m pytest ...`, ruff, mypy: the files, folders and markers named exist;
- ```python blocks compile; every fence is of a kind the check knows; links resolve.
Slow part (test_the_docs_main_commands_run_for_real, in tests/docs_chain.py): the main commands run
for real, as the docs show them, on tiny data in a temporary folder. Every subcommand the docs show is
run there or listed in NOT_RUN with the reason it is only parsed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache

import markdown_it
import pytest

from tests.docs_chain import CHAIN_COMMANDS, run_chain
from tests.docs_commands import (
    KNOWN_INFOS,
    ROOT,
    Block,
    Command,
    all_commands,
    blocks,
    commands_of,
    edgeopt_commands,
    find,
    kind_of,
    pages,
)

# Subcommands the docs show that the chain does not run, and why: each is still parsed, line by line.
NOT_RUN = {
    "demo": "a full training on 3,000 images: minutes; the README's first command, run by hand for docs/demo-report.png",
    "setup": "creates onnx2tf's own environment: downloads about 2.6 GB (tests/test_sources.py covers the conversion)",
    "search": "trains candidates on Ray for minutes (tests/test_search.py runs a tiny search)",
}
# Lines of run subcommands that are parsed only, by what keeps them from running here.
PARSED_ONLY_BECAUSE = {
    "--weights imagenet": "downloads the ImageNet backbone",
    "postgresql+psycopg://": "needs a PostgreSQL server set up as docs/fleet.md says (tests/test_fleet_*.py run one)",
    "--methods f0_float32,f2_int8,qat_int8": "the tfmot extra and minutes of fine-tuning (tests/test_retrain.py)",
    "classifier.": "a model file of the user's (tests/test_sources.py builds each kind)",
}
README_MAX_LINES = 150
SCREENSHOT_MAX_BYTES = 400_000


def _ids(commands: list[Command]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for c in commands:
        seen[c.where] = seen.get(c.where, 0) + 1
        ids.append(c.where if seen[c.where] == 1 else f"{c.where}#{seen[c.where]}")
    return ids


@cache
def _edgeopt_command():
    import typer.main

    from edgeopt.cli import app

    return typer.main.get_command(app)


def parse_edgeopt(args: list[str]):
    """edgeopt's command line parses `args` down to the subcommand and stops: nothing runs."""
    ctx = _edgeopt_command().make_context("edgeopt", list(args))
    while hasattr(ctx.command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = ctx.command.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
    return ctx


def subcommand(command: Command) -> str:
    return parse_edgeopt(command.edgeopt_args).command_path.removeprefix("edgeopt ")


def test_the_check_refuses_a_command_that_went_stale():
    from typer._click.exceptions import ClickException

    with pytest.raises(ClickException, match="No such option"):
        parse_edgeopt(["optimize", "runs/m1", "--out", "runs/m1-opt", "--max-drop", "1"])
    with pytest.raises(ClickException, match="less than or equal to 0.99"):
        parse_edgeopt(["device", "run", "--server", "s", "--state", "d", "--root", "r.json", "--jitter", "2"])
    with pytest.raises(ClickException, match="No such command"):
        parse_edgeopt(["deploy", "runs/m1-opt"])
    with pytest.raises(ClickException, match="Missing parameter: keys"):
        parse_edgeopt(["publish", "runs/m1-opt", "--repo", "repo"])
    assert subcommand(Command("x.md", 1, "", ("edgeopt", "rollout", "start", "r", "--repo", "r", "--keys", "k"), "edgeopt")) \
        == "rollout start"
    assert kind_of(["edgeopt-deploy", "x"]) == "unknown" and kind_of(["python", "deploy.py"]) == "unknown"


def test_shell_lines_are_split_as_a_shell_would():
    shown = Block("x.md", 1, "", "mkdir -p frames && edgeopt device sort --state device --watch frames   # a comment\n"
                  "edgeopt device run --server http://127.0.0.1:8080 \\\n    --state device &\n"
                  "EDGEOPT_X=1 .venv/bin/python -m pytest tests/test_docs.py -m \"not slow\"\n")
    assert [(c.line, c.argv, c.kind) for c in commands_of(shown)] == [
        (2, ("mkdir", "-p", "frames"), "system"),
        (2, ("edgeopt", "device", "sort", "--state", "device", "--watch", "frames"), "edgeopt"),
        (3, ("edgeopt", "device", "run", "--server", "http://127.0.0.1:8080", "--state", "device"), "edgeopt"),
        (5, (".venv/bin/python", "-m", "pytest", "tests/test_docs.py", "-m", "not slow"), "pytest"),
    ]
    cron = Block("x.md", 1, "crontab", "* * * * * edgeopt rollout watch --repo r --keys k >> /var/log/x.log 2>&1\n")
    assert [c.argv for c in commands_of(cron)] == [("edgeopt", "rollout", "watch", "--repo", "r", "--keys", "k")]


def test_every_fence_is_a_kind_the_check_knows():
    unknown = [f"{b.page}:{b.line} ({b.info})" for b in blocks() if b.info not in KNOWN_INFOS]
    assert not unknown, "tag these blocks (text, json, python, nginx, crontab, or none for commands): " + ", ".join(unknown)
    strangers = [f"{c.where}: {c.text}" for c in all_commands() if c.kind == "unknown"]
    assert not strangers, ("commands the docs check does not know (add them to tests/docs_commands.py, or tag output "
                           "as text):\n" + "\n".join(strangers))


def _run_or_why(command: Command) -> str:
    """How the check exercises a shown command beyond parsing it: "run", or why it is parsed only."""
    if command.text in {" ".join(shlex.split(text)) for text in CHAIN_COMMANDS}:
        return "run"
    for words, why in PARSED_ONLY_BECAUSE.items():
        if words in command.text:
            return f"parsed only: {why}"
    name = command.edgeopt_args[0] if command.edgeopt_args else ""
    return f"parsed only: {NOT_RUN[name]}" if name in NOT_RUN else "parsed only: the chain runs this subcommand as shown elsewhere"


@pytest.mark.parametrize("command", edgeopt_commands(), ids=[f"{i} ({_run_or_why(c)})" for i, c in zip(
    _ids(edgeopt_commands()), edgeopt_commands(), strict=True)])
def test_every_edgeopt_command_shown_parses(command):
    from typer._click.exceptions import ClickException

    try:
        parse_edgeopt(command.edgeopt_args)
    except ClickException as exc:
        pytest.fail(f"{command.where}: `{command.text}` does not parse: {exc.format_message()}")


@cache
def _bench_help(script: str) -> str:
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} --help exited {done.returncode}: {done.stderr[-1000:]}"
    return done.stdout


BENCH = [c for c in all_commands() if c.kind == "bench"]


@pytest.mark.parametrize("command", BENCH, ids=_ids(BENCH))
def test_every_benchmark_shown_exists_and_takes_its_options(command):
    script = command.argv[1]
    assert (ROOT / script).is_file(), f"{command.where}: {script} does not exist"
    help_text = _bench_help(script)
    for option in [a.split("=")[0] for a in command.argv[2:] if a.startswith("--")]:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), f"{command.where}: {script} has no {option}"


# Packages the docs tell a user to install in an environment of their own (not edgeopt's): the
# PyTorch exporter's companion, for exporting a team's model to ONNX.
THIRD_PARTY = {"onnxscript"}


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


PIP = [c for c in all_commands() if c.kind == "pip"]


@pytest.mark.parametrize("command", PIP, ids=_ids(PIP))
def test_every_install_names_extras_that_exist(command):
    words = list(command.argv[2:])
    if "-c" in words:
        constraints = words.pop(words.index("-c") + 1)
        words.remove("-c")
        assert (ROOT / constraints).is_file(), f"{command.where}: no {constraints}"
    specs = [w for w in words if w != "-e"]
    assert specs, f"{command.where}: installs nothing"
    for spec in specs:
        if spec in THIRD_PARTY:
            continue
        match = re.fullmatch(r"(\.|\./edgeopt)(?:\[([\w,-]+)\])?", spec)
        assert match, f"{command.where}: {spec} is not this repository (. or a copy of it, ./edgeopt)"
        missing = set((match.group(2) or "").split(",")) - {""} - _extras()
        assert not missing, f"{command.where}: pyproject.toml has no extra {sorted(missing)}"


TOOLS = [c for c in all_commands() if c.kind in ("pytest", "lint")]


@pytest.mark.parametrize("command", TOOLS, ids=_ids(TOOLS))
def test_every_test_and_lint_command_names_what_exists(command):
    markers = {m.split(":")[0] for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    words = list(command.argv)
    for i, word in enumerate(words):
        if words[i - 1] == "-m" and command.kind == "pytest" and i >= 3:
            unknown = set(re.findall(r"[A-Za-z_]\w*", word)) - {"and", "or", "not"} - markers
            assert not unknown, f"{command.where}: no marker {sorted(unknown)} in pyproject.toml"
        elif re.fullmatch(r"(src|tests|bench)(/[\w./-]+)?", word):
            assert (ROOT / word).exists(), f"{command.where}: {word} does not exist"


def test_python_shown_compiles():
    for block in [b for b in blocks() if b.info == "python"]:
        compile(block.text, f"{block.page}:{block.line}", "exec")


def test_every_subcommand_shown_is_run_for_real_or_says_why_not():
    run = {subcommand(find(text)) for text in CHAIN_COMMANDS}
    assert not run & set(NOT_RUN), f"run by the chain, yet listed as not run: {run & set(NOT_RUN)}"
    shown = {subcommand(c): c for c in edgeopt_commands()}
    neither = {f"edgeopt {name} ({c.where})" for name, c in shown.items() if name not in run | set(NOT_RUN)}
    assert not neither, f"shown in the docs, but neither run by tests/docs_chain.py nor listed in NOT_RUN with why: {neither}"


def test_every_command_of_the_chain_is_shown_in_the_docs():
    for text in CHAIN_COMMANDS:
        find(text)  # fails naming the command the docs no longer show


def _links(page) -> list[str]:
    found = []
    for token in markdown_it.MarkdownIt("commonmark").parse(page.read_text()):
        for child in token.children or []:
            if child.type == "link_open":
                found.append(child.attrs["href"])
            elif child.type == "image":
                found.append(child.attrs["src"])
    return found


def _anchors(page) -> set[str]:
    """GitHub's anchors of a page's headings."""
    heads = re.findall(r"^#+\s+(.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in heads}


def _results_of_a_benchmark_not_yet_run(target) -> bool:
    """bench/results/NAME.md or .json that bench/NAME.py writes, before its first committed run."""
    results = ROOT / "bench" / "results"
    return target.parent == results and (ROOT / "bench" / f"{target.stem}.py").is_file()


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in pages():
        for href in _links(page):
            if re.match(r"[a-z]+:", href):
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                if _results_of_a_benchmark_not_yet_run(target):
                    continue
                broken.append(f"{page.relative_to(ROOT)}: {href}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {href} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_door():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < README_MAX_LINES
    links = _links(readme)
    shot = ROOT / "docs" / "demo-report.png"
    assert "docs/demo-report.png" in links and shot.stat().st_size < SCREENSHOT_MAX_BYTES
    index = _links(ROOT / "docs" / "README.md")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert page.name in index, f"docs/README.md does not list {page.name}"
            assert f"docs/{page.name}" in links, f"README.md does not link docs/{page.name}"


@pytest.mark.slow
def test_the_docs_main_commands_run_for_real(tiny_model, synthetic_dir, tmp_path, monkeypatch, capsys):
    run_chain(tmp_path, tiny_model, synthetic_dir, monkeypatch, capsys)
