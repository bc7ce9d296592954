"""The docs' main commands run for real, in the order a user runs them, on tiny synthetic data.

Each step takes a command exactly as a page shows it (tests/docs_commands.find fails naming it when the
docs change it), fills in what cannot be literal here (a free port instead of 8080, a device id, the
public key `device keygen` printed), appends only settings that make it tiny (fewer methods, epochs,
rounds; each said where it is appended), runs it through edgeopt's entry point in a temporary folder that
holds what the docs' names refer to (photos/, runs/m1, samples/, photo1.jpg, ...), and checks the
exit code and what the docs say it does. `serve` and `device sort` run as processes of their own.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.docs_commands import ROOT, blocks, find

TRAIN = "edgeopt train photos --out runs/m1 --weights none --strict"
OPTIMIZE = "edgeopt optimize runs/m1 --out runs/m1-opt"
OPTIMIZE_INF = "edgeopt optimize runs/m1 --out runs/m1-opt --w-time inf"
METHODS = "edgeopt methods"
INSPECT = "edgeopt inspect runs/m1-opt/variants/f3_int8_uint8io.tflite"
CLASSIFY = "edgeopt classify runs/m1-opt/selected.tflite photo1.jpg photo2.jpg"
CLASSIFY_BAD = "edgeopt classify runs/m1-opt/selected.tflite photo1.jpg notes.txt photo2.jpg"
BENCH = "edgeopt device bench runs/m1-opt --out pi.json --images samples"
CHOOSE = "edgeopt choose runs/m1-opt --device-results pi.json --out runs/m1-pi"
CHOOSE_AGAIN = "edgeopt choose runs/m1-opt --device-results device.json --guard non-inferiority"
PROFILE = "edgeopt device profile"
KEYS = "edgeopt keys generate --out keys --channels stable"
INIT = "edgeopt repo init repo --keys keys --channels stable"
ANCHOR = "edgeopt repo trust-anchor repo --out root.json"
ANCHOR_PRINT = "edgeopt repo trust-anchor repo"
PUBLISH = "edgeopt publish runs/m1-opt --repo repo --keys keys"
PUBLISH_VARIANT = "edgeopt publish runs/m1-opt --variant f4_float16 --repo repo --keys keys"
ENROLL = "edgeopt fleet enroll sorter-1 --repo repo --out sorter-1.key"
KEYGEN = "edgeopt device keygen --out device/device.key"
ENROLL_PUBLIC = "edgeopt fleet enroll sorter-1 --repo repo --public-key ed25519:PASTE-WHAT-KEYGEN-PRINTED"
OPERATOR = "edgeopt fleet add-operator alice --repo repo --out alice.token"
SERVE = "edgeopt serve repo --port 8080"
DEVICE_RUN = ("edgeopt device run --server http://127.0.0.1:8080 --state device --root root.json --device-id sorter-1 "
              "--key-file sorter-1.key")
DEVICE_RUN_SLOW_LINK = ("edgeopt device run --server http://127.0.0.1:8080 --state device --root root.json --once "
                        "--min-rate 1024 --rate-window 120")
SORT = "edgeopt device sort --state device --watch frames"
FLEET_SHOW = "edgeopt fleet show repo"
PUBLISH_JOB = "edgeopt publish-job runs/m1-opt --repo repo --keys keys"
REFRESH = "edgeopt refresh --repo repo --keys keys"
ADD_CHANNEL = "edgeopt repo add-channel repo beta --keys keys"
STATUS = "edgeopt repo status repo"
ROTATE = "edgeopt keys rotate --repo repo --keys keys --role timestamp"
ROLLOUT_START = "edgeopt rollout start runs/m2-opt --repo repo --keys keys --stages 1,5,25,100 --soak 1h"
ROLLOUT_STATUS = "edgeopt rollout status --repo repo"
ROLLOUT_WATCH = "edgeopt rollout watch --repo repo --keys keys"
ROLLOUT_PAUSE = 'edgeopt rollout pause --repo repo --channel stable --reason "night shift"'
ROLLOUT_RESUME = "edgeopt rollout resume --repo repo --channel stable"
ROLLOUT_ABORT = 'edgeopt rollout abort --repo repo --keys keys --channel stable --reason "belt 3 jams"'
PRUNE = "edgeopt fleet prune --repo repo --older-than-days 90"

CHAIN_COMMANDS = (
    TRAIN, OPTIMIZE, OPTIMIZE_INF, METHODS, INSPECT, CLASSIFY, CLASSIFY_BAD, BENCH, CHOOSE, CHOOSE_AGAIN, PROFILE,
    KEYS, INIT, ANCHOR, ANCHOR_PRINT, PUBLISH, ENROLL, KEYGEN, ENROLL_PUBLIC, OPERATOR, SERVE, DEVICE_RUN, SORT,
    FLEET_SHOW, PUBLISH_VARIANT, DEVICE_RUN_SLOW_LINK, PUBLISH_JOB, REFRESH, ADD_CHANNEL, STATUS, ROTATE,
    ROLLOUT_START, ROLLOUT_STATUS, ROLLOUT_WATCH, ROLLOUT_PAUSE, ROLLOUT_RESUME, ROLLOUT_ABORT, PRUNE,
)
# What makes the chain tiny: appended to the docs' commands, never replacing what they say.
TINY_TRAIN = ("--image-size", "32", "--alpha", "0.35", "--epochs-head", "1", "--epochs-finetune", "0", "--no-augment")
TINY_OPTIMIZE = ("--methods", "f0_float32,f2_int8,f3_int8_uint8io,f4_float16", "--backends", "litert", "--rounds", "2",
                 "--invocations", "3", "--train-images", "0", "--representative-samples", "10")
TINY_BENCH = ("--rounds", "2", "--invocations", "3")
# Generous: a loaded 2-core machine; nothing here is timed.
WAIT_S = 180


def _text_lines(page: str) -> set[str]:
    """Every line of the output blocks (```text) of a page."""
    return {line.strip() for b in blocks() if b.page == page and b.info == "text" for line in b.text.splitlines()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chain:
    def __init__(self, folder: Path, capsys) -> None:
        self.folder, self.capsys, self.done = folder, capsys, []
        self.port = str(_free_port())

    def argv(self, text: str, extra: tuple[str, ...] = (), replace: dict[str, str] | None = None) -> list[str]:
        command = find(text)
        self.done.append(text)
        words = command.edgeopt_args
        for old, new in {"8080": self.port, **(replace or {})}.items():
            words = [w.replace(old, new) for w in words]
        return [*words, *extra]

    def run(self, text: str, *extra: str, expect: int = 0, replace: dict[str, str] | None = None) -> tuple[str, str]:
        from edgeopt.cli import main

        argv = self.argv(text, extra, replace)
        code = main(argv)
        out, err = self.capsys.readouterr()
        assert code == expect, f"`edgeopt {' '.join(argv)}` ({find(text).where}) exited {code}, not {expect}:\n{err[-3000:]}"
        return out, err

    def start(self, text: str, *extra: str) -> subprocess.Popen:
        """A long-running command, in a process of its own (its stdout a pipe)."""
        return subprocess.Popen([sys.executable, "-m", "edgeopt", *self.argv(text, extra)], cwd=self.folder,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _wait_until_serving(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"edgeopt serve exited {server.returncode}: {server.stderr.read()[-2000:]}"
        try:
            if httpx.get(f"{url}/metadata/timestamp.json", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"edgeopt serve did not answer within {WAIT_S} s")


def _stop(process: subprocess.Popen) -> int:
    process.terminate()
    return process.wait(timeout=WAIT_S)


def _set_up(folder: Path, tiny_model: Path, synthetic_dir: Path) -> list[str]:
    """What the docs' names refer to: photos/, runs/m1 (a trained model), photo1.jpg, notes.txt, samples/."""
    shutil.copytree(synthetic_dir, folder / "photos")
    shutil.copytree(tiny_model, folder / "runs" / "m1")
    classes = sorted(p.name for p in (folder / "photos").iterdir() if p.is_dir())
    for i, name in enumerate(("photo1.jpg", "photo2.jpg")):
        shutil.copy(sorted((folder / "photos" / classes[i]).iterdir())[0], folder / name)
    (folder / "notes.txt").write_text("not a photo\n")
    for samples in (folder / "samples", folder / "device" / "samples"):
        for cls in classes:
            (samples / cls).mkdir(parents=True)
            for photo in sorted((folder / "photos" / cls).iterdir())[-2:]:
                shutil.copy(photo, samples / cls / photo.name)
    return classes


def run_chain(folder: Path, tiny_model: Path, synthetic_dir: Path, monkeypatch, capsys) -> None:
    classes = _set_up(folder, tiny_model, synthetic_dir)
    monkeypatch.chdir(folder)
    chain = Chain(folder, capsys)

    # Your own photos (docs/own-photos.md, docs/files.md, docs/classify.md)
    chain.run(TRAIN, *TINY_TRAIN, replace={"runs/m1": "runs/m1-trained"})
    assert json.loads((folder / "runs/m1-trained/labels.json").read_text())["classes"] == classes
    assert {"model.keras", "split.json"} <= {p.name for p in (folder / "runs/m1-trained").iterdir()}
    chain.run(OPTIMIZE, *TINY_OPTIMIZE)
    results = json.loads((folder / "runs/m1-opt/results.json").read_text())
    selected = results["choice"]["selected"]
    assert {"selected.tflite", "report.html", "report.md", "labels.json"} <= {p.name for p in (folder / "runs/m1-opt").iterdir()}
    _, err = chain.run(OPTIMIZE, expect=2)  # again: the output exists, and files.md shows the one line said
    assert err.strip() in _text_lines("docs/files.md")
    _, err = chain.run(OPTIMIZE_INF, expect=2)
    assert err.strip() in _text_lines("docs/files.md")
    out, _ = chain.run(METHODS)
    assert "f3_int8_uint8io" in out and "qat_int8" in out
    out, _ = chain.run(INSPECT)
    assert "uint8" in out
    out, _ = chain.run(CLASSIFY)
    assert [line.split(":")[0] for line in out.splitlines()] == ["photo1.jpg", "photo2.jpg"]
    out, err = chain.run(CLASSIFY_BAD, expect=2)  # docs/classify.md: every good file answered, the bad one named
    assert [line.split(":")[0] for line in out.splitlines()] == ["photo1.jpg", "photo2.jpg"]
    assert err.startswith("error: notes.txt is not a readable image")

    # A device (docs/devices.md, docs/choice.md)
    chain.run(BENCH, *TINY_BENCH)
    bench = json.loads((folder / "pi.json").read_text())
    assert json.dumps(bench).count("f3_int8_uint8io") >= 1
    chain.run(CHOOSE)
    assert (folder / "runs/m1-pi/report.html").is_file()
    shutil.copy(folder / "pi.json", folder / "device.json")
    chain.run(CHOOSE_AGAIN)
    out, _ = chain.run(PROFILE)
    assert "runtime_health" in out

    # Deploying (docs/device-delivery.md, docs/fleet.md)
    chain.run(KEYS)
    assert all(p.stat().st_mode & 0o077 == 0 for p in (folder / "keys").glob("*.key"))
    out, _ = chain.run(INIT)
    assert "repo/metadata/1.root.json" in out
    chain.run(ANCHOR)
    assert (folder / "root.json").read_bytes() == (folder / "repo/metadata/1.root.json").read_bytes()
    out, _ = chain.run(ANCHOR_PRINT)
    assert "1.root.json" in out
    chain.run(PUBLISH)
    chain.run(ENROLL)
    assert (folder / "sorter-1.key").stat().st_mode & 0o077 == 0
    out, _ = chain.run(KEYGEN)
    public = next(w for w in out.split() if w.startswith("ed25519:"))
    chain.run(ENROLL_PUBLIC, replace={"sorter-1": "sorter-2", "ed25519:PASTE-WHAT-KEYGEN-PRINTED": public})
    chain.run(OPERATOR)
    server = chain.start(SERVE)
    try:
        _deploy_and_roll_out(chain, folder, server, selected, classes)
    finally:
        _stop(server)
    assert set(chain.done) == set(CHAIN_COMMANDS), "every command of CHAIN_COMMANDS runs"


def _deploy_and_roll_out(chain: Chain, folder: Path, server: subprocess.Popen, selected: str, classes: list[str]) -> None:
    url = f"http://127.0.0.1:{chain.port}"
    _wait_until_serving(server, url)
    chain.run(DEVICE_RUN, "--once")  # the docs start it in the background (&); --once checks once and exits
    assert (folder / "device/active").exists()
    _curl_fleet_json(folder, url)

    (folder / "frames").mkdir()  # `mkdir -p frames && edgeopt device sort ...`
    sort = chain.start(SORT)
    try:
        lines = _lines(sort.stdout)
        shutil.copy(folder / "photo1.jpg", folder / "frames" / "a.jpg")
        answer = json.loads(lines.get(timeout=WAIT_S))
        assert answer["file"].endswith("a.jpg") and answer["class"] in classes and 0 <= answer["confidence"] <= 1
        shutil.copy(folder / "notes.txt", folder / "frames" / "b.jpg")
        refused = json.loads(lines.get(timeout=WAIT_S))
        assert "error" in refused and (folder / "frames/rejected/b.jpg").exists()
    finally:
        assert _stop(sort) == 143  # docs/exit-codes.md: terminated (SIGTERM)

    out, _ = chain.run(FLEET_SHOW)
    assert "sorter-1" in out
    chain.run(PUBLISH_VARIANT)
    chain.run(DEVICE_RUN_SLOW_LINK)
    chain.run(PUBLISH_JOB)
    chain.run(REFRESH)
    chain.run(ADD_CHANNEL)
    out, _ = chain.run(STATUS)
    assert "beta" in out
    chain.run(ROTATE)
    assert any((folder / "keys" / "retired").iterdir())

    # Staged rollouts (docs/rollout.md): a variant neither publish above sent, so that it is a new model
    other = next(v for v in ("f2_int8", "f3_int8_uint8io", "f0_float32") if v != selected)
    chain.run(ROLLOUT_START, "--variant", other, replace={"runs/m2-opt": "runs/m1-opt"})
    out, _ = chain.run(ROLLOUT_STATUS)
    assert "stable" in out
    chain.run(ROLLOUT_WATCH)
    chain.run(ROLLOUT_PAUSE)
    chain.run(ROLLOUT_RESUME)
    chain.run(ROLLOUT_ABORT)
    out, _ = chain.run(ROLLOUT_STATUS)
    assert "abort" in out.lower()
    chain.run(PRUNE)


def _curl_fleet_json(folder: Path, url: str) -> None:
    """docs/fleet.md's curl line, with the server's port: operators read the fleet with their token."""
    line = next(c.shell_line for c in _shown("curl") if "limit" not in c.shell_line)
    line = line.replace("127.0.0.1:8080", url.removeprefix("http://"))
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
    else:  # the same request without curl
        token = (folder / "alice.token").read_text().strip()
        answer = httpx.get(f"{url}/fleet.json", headers={"Authorization": f"Bearer {token}"}, timeout=WAIT_S).json()
    assert "sorter-1" in json.dumps(answer), answer


def _shown(program: str):
    from tests.docs_commands import all_commands

    return [c for c in all_commands() if c.argv[0] == program]


__all__ = ["CHAIN_COMMANDS", "ROOT", "run_chain"]
