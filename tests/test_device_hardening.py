"""What a hostile mirror, a full disk and a broken release did to the device at 2f41b66 (issue 28,
delivery): compressed answers, headers trickled a byte at a time, a disk that fills, a signed but
malformed labels.json or input contract, and a trust anchor older than a root rotation. Each
against a real server on 127.0.0.1; the agent's memory is measured in a child process."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeopt.device.agent import Agent, AgentConfig
from edgeopt.device.fetch import Limits
from edgeopt.device.state import DeviceState
from edgeopt.fleet.auth import generate_device_key
from edgeopt.release.keys import generate_keys
from edgeopt.release.repository import Repository, release_custom
from tests.delivery_helpers import HostileServer, ServerThread, StaticServer, TrickledHeaders, run_loop
from tests.test_delivery import Setup, log_events, runs  # noqa: F401  (runs: the fixture Setup needs)

# The agent's whole memory, peak resident set, under any hostile answer (issue 28).
PEAK_RSS_LIMIT_MB = 150
# Small limits, so a slow answer is judged in about a second; a trickle of a few bytes a second
# is hundreds of times under the minimum rate, whatever the load on this machine.
FAST = Limits(timeout_s=5, min_rate_bps=2000, rate_window_s=1.0, deadline_base_s=20)
TRICKLE_S = 0.2


@pytest.fixture
def setup(tmp_path, runs):  # noqa: F811
    return Setup(tmp_path, runs)


def zstd_bomb(frames: int = 8, frame_bytes: int = 256 * 1024**2) -> bytes:
    """`frames` zstd frames of `frame_bytes` zeros each (a decoder reads them as one stream):
    about 10 KB a frame on the wire, 2 GiB decoded."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(1024**2)
    frame = b"".join(compressor.compress(zeros) for _ in range(frame_bytes // len(zeros))) + compressor.flush()
    return frame * frames


# `python -m edgeopt ...`, with `before` run first, that prints its peak resident memory (VmHWM:
# this process image's own, since exec) to stderr as it exits. ru_maxrss cannot tell: exec records
# the forking process's peak in it, and here that is pytest with TensorFlow loaded.
AGENT = """import atexit, runpy, sys
{before}
def peak():
    with open('/proc/self/status') as status:
        kb = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
    print(f'peak-rss-kb {{kb}}', file=sys.stderr)
atexit.register(peak)
sys.argv[0] = 'edgeopt'
runpy.run_module('edgeopt', run_name='__main__', alter_sys=True)
"""


def once(setup: Setup, url: str, *options: str, before: str = "") -> tuple[subprocess.CompletedProcess, float]:
    """`edgeopt device run --once` in a child process: its result, and its peak resident memory in MB."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc")
    command = [sys.executable, "-c", AGENT.format(before=before), "device", "run", "--server", url, "--state",
               str(setup.state), "--root", str(setup.root), "--once", "--device-id", "sorter-1", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    peaks = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    assert len(peaks) == 1, result.stderr[-2000:]
    return result, peaks[0] / 1024


def in_thread(agent: Agent, timeout_s: float = 60.0):
    """check_once in a worker thread (no signal can bound it there), and the seconds it took."""
    result: list = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(agent.check_once()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), f"the agent was still waiting after {timeout_s:.0f} s"
    return result[0], time.monotonic() - started


# --- case 2: compressed answers ----------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
@pytest.mark.parametrize("where", ["metadata", "model"])
def test_a_compressed_answer_is_refused_unread(setup, where, encoding):
    setup.publish(0)
    bomb = gzip.compress(bytes(64 * 1024**2)) if encoding == "gzip" else zstd_bomb(frames=1, frame_bytes=64 * 1024**2)
    asked = []

    def compress(path, data, headers):
        asked.append(headers.get("Accept-Encoding"))
        hit = path == "/metadata/timestamp.json" if where == "metadata" else path.endswith(".model") and data is not None
        return (200, {"Content-Encoding": encoding}, bomb) if hit else None

    with HostileServer(setup.repo_path, compress) as hostile:
        outcome = setup.agent(hostile.url).check_once()
    assert f"Content-Encoding {encoding!r}" in str(outcome), outcome
    # a metadata answer that breaks the protocol is refused (exit 3); a model is retried however
    # often it happens, since a network must never block a valid release for good
    assert outcome.refused if where == "metadata" else outcome.kind == "retry"
    assert set(asked) == {"identity"}
    assert setup.active() is None and not (setup.state / "rejected.json").exists()
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"


# --- case 5: headers trickled a byte at a time -------------------------------------------------------

@pytest.mark.parametrize("where", ["metadata", "model", "report"])
def test_trickled_headers_are_held_to_the_minimum_rate_in_any_thread(setup, tmp_path, where):
    """The rate is counted from the first byte of the answer, headers included, on the connection
    itself: the agent is cut in about one rate window, in a worker thread as in the main one."""
    setup.publish(0)
    generate_device_key(tmp_path / "device.key")

    def trickle(path, data, headers):
        hit = {"metadata": path == "/metadata/timestamp.json", "model": path.endswith(".model") and data is not None,
               "report": path == "/status"}[where]
        return (200, {}, TrickledHeaders(TRICKLE_S)) if hit else None

    with HostileServer(setup.repo_path, trickle) as hostile:
        agent = setup.agent(hostile.url, limits=FAST, key_file=tmp_path / "device.key")
        outcome, seconds = in_thread(agent)
        requests = list(hostile.requests)
    if where == "report":  # the check itself completed; its report was cut, and the agent went on
        assert str(outcome) == "activated release 1" and "POST /status" in requests
    else:
        assert outcome.kind == "retry" and "slow retrieval" in str(outcome) and "under the minimum" in str(outcome), outcome
    assert seconds < 30  # a window of 1 s, not the minutes of a whole deadline


# --- case 3: a disk that fills -------------------------------------------------------------------------

def fill_the_disk_under_the_download(setup: Setup) -> Path:
    """The next download of the channel's model writes to /dev/full: ENOSPC from the kernel."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    staging = setup.state / "staging" / setup.repo.current_release("stable")["sha256"]
    staging.mkdir(parents=True)
    (staging / "model.tflite.zst.part").symlink_to("/dev/full")
    return staging


def test_a_disk_that_fills_during_a_download_is_retried_and_the_loop_goes_on(setup):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url)
        assert str(agent.check_once()) == "activated release 1"
        setup.publish(1)
        staging = fill_the_disk_under_the_download(setup)
        run_loop(agent, 2)  # the loop `device run` runs: the first check hits the full disk; the loop goes on
        assert not staging.exists()  # the partial download gave its space back
    assert setup.active() == 2
    retries = [e for e in log_events(setup) if e["event"] == "retry"]
    assert len(retries) == 1 and "No space left on device" in retries[0]["reason"], retries
    assert not [e for e in log_events(setup) if e["event"] == "internal-error"]


def test_once_exits_with_the_retry_code_when_the_disk_is_full(setup):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        fill_the_disk_under_the_download(setup)
        full, _ = once(setup, server.url)
        assert full.returncode == 1 and "internal error" not in full.stderr, full.stderr
        assert full.stdout.startswith("will retry: the device could not write its files") and "No space left" in full.stdout
        assert setup.active() is None and not list((setup.state / "staging").iterdir())
        assert once(setup, server.url)[0].stdout.strip() == "activated release 1"


def test_once_exits_with_the_retry_code_when_metadata_cannot_be_saved(setup):
    """No byte can be written (RLIMIT_FSIZE 0: EFBIG on every write): TUF cannot save the trusted
    root; agent.log lines go to stderr; nothing is activated, and the next check works."""
    setup.publish(0)
    no_bytes = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))")
    with ServerThread(setup.repo_path) as server:
        full, _ = once(setup, server.url, before=no_bytes)
        assert full.returncode == 1 and "internal error" not in full.stderr, full.stderr
        assert full.stdout.startswith("will retry: the device could not write its files") and "File too large" in full.stdout
        assert '"event": "retry"' in full.stderr  # the log line the disk did not take
        assert setup.active() is None
        assert once(setup, server.url)[0].stdout.strip() == "activated release 1"


# --- case 4: a signed release whose own files are malformed -----------------------------------------------

CLASSES = ["carton", "glass_bottle", "paper", "plastic_bottle", "tin_can"]
BAD_LABELS = {
    "no classes": json.dumps({"names": CLASSES}).encode(),
    "not JSON": b'{"classes": ["carton", ',
    "not UTF-8": b'{"classes": ["carton", "glass_bottle", "paper", "plastic_bottle", "tin_\xff\xfe"]}',
    "classes not a list": json.dumps({"classes": "carton"}).encode(),
    "scale as words": json.dumps({"classes": CLASSES, "input": {"pixel_scale": ["one", "one", "one"]}}).encode(),
    "offset of two": json.dumps({"classes": CLASSES, "input": {"pixel_offset": [0.0, 0.0]}}).encode(),
}
BAD_CONTRACTS = {
    "signed scale as words": {"pixel_scale": ["one", "one", "one"]},
    "signed offset of two": {"pixel_offset": ["0.0", "0.0"]},
    "signed shape as text": {"tensor": {"shape": "1x48x48x3"}},
}


@pytest.mark.parametrize("fault", [*BAD_LABELS, *BAD_CONTRACTS])
def test_a_signed_release_with_malformed_labels_or_contract_is_refused_for_good(setup, tmp_path, fault):
    setup.publish(0)
    model, labels, custom = release_custom(*setup.runs[1])
    if fault in BAD_LABELS:
        labels = tmp_path / "labels.json"
        labels.write_bytes(BAD_LABELS[fault])
    else:
        custom["input"] = {**custom["input"], **BAD_CONTRACTS[fault]}
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url)
        assert str(agent.check_once()) == "activated release 1"
        setup.repo.publish_release(setup.keys, "stable", model, labels, custom)
        first = agent.check_once()
        assert first.kind == "refused" and ("its labels.json" in str(first) or "its signed metadata" in str(first)), first
        again = agent.check_once()  # refused for good, from its own signed bytes: not fetched again
        assert again.kind == "skipped", again
        run_loop(agent, 2)  # and the loop `device run` runs goes on
    assert setup.active() == 1
    assert not [e for e in log_events(setup) if e["event"] == "internal-error"]
    assert len(json.loads((setup.state / "rejected.json").read_text())) == 1


# --- case 7: the trust anchor after a root rotation ----------------------------------------------------------

def test_a_device_provisioned_from_the_named_trust_anchor_refuses_the_retired_root_key(setup, tmp_path):
    """Whoever holds the retired root key signs a chain 2.root.json, 3.root.json of their own and a
    foreign repository. A device given what `repo trust-anchor` names (the newest root) refuses
    it; a device given the old 1.root.json accepts it -- what the README says a rotation does not
    revoke."""
    setup.publish(0)
    retired = setup.repo.rotate(setup.keys, "root")
    named = tmp_path / "anchor.json"
    cli = subprocess.run([sys.executable, "-m", "edgeopt", "repo", "trust-anchor", str(setup.repo_path), "--out", str(named)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert named.read_bytes() == (setup.repo_path / "metadata" / "2.root.json").read_bytes()
    status = subprocess.run([sys.executable, "-m", "edgeopt", "repo", "status", str(setup.repo_path)],
                            capture_output=True, text=True, timeout=120)
    assert f"trust anchor for new devices (--root): {setup.repo_path / 'metadata' / '2.root.json'}" in status.stdout

    attacker = tmp_path / "attacker-keys"
    generate_keys(attacker, ("stable",))
    shutil.copy(retired, attacker / "root.key")
    forged = Repository(tmp_path / "forged")
    forged.init(attacker, ("stable",))
    for _ in range(2):  # 2.root.json and 3.root.json, signed by the retired root key
        forged.rotate(attacker, "timestamp")
    model, labels, custom = release_custom(*setup.runs[1])
    forged.publish_release(attacker, "stable", model, labels, custom)

    def device(name: str, root: Path) -> Agent:
        samples = tmp_path / name / "samples"
        shutil.copytree(setup.state / "samples", samples)
        return Agent(AgentConfig(server=mirror.url, state=tmp_path / name, root=root, device_id=name, limits=FAST))

    with StaticServer(forged.path) as mirror:
        refused = device("new", named).check_once()
        assert refused.refused and "metadata does not verify" in str(refused), refused
        assert DeviceState.complete(tmp_path / "new" / "active") is None
        # the limit of a rotation: a device still holding the old root follows the forged chain
        assert str(device("old", setup.repo_path / "metadata" / "1.root.json").check_once()) == "activated release 1"


# --- memory: the whole agent, in a child process ------------------------------------------------------------

def test_the_agent_stays_under_150_mb_for_every_hostile_answer(setup):
    """`device run --once` against each hostile answer: the expected outcome, and the child's peak
    resident memory under PEAK_RSS_LIMIT_MB (at 2f41b66 the zstd answers took it past 2 GB)."""
    setup.publish(0)
    bomb = zstd_bomb()
    assert len(bomb) < 200_000

    def hostile(path, data, headers):
        case = current[0]
        if case == "timestamp bomb" and path == "/metadata/timestamp.json":
            return 200, {"Content-Encoding": "zstd"}, bomb
        if case == "model bomb" and path.endswith(".model") and data is not None:
            return 200, {"Content-Encoding": "zstd"}, bomb
        if case == "trickled headers" and path == "/metadata/timestamp.json":
            return 200, {}, TrickledHeaders(TRICKLE_S)
        if case == "endless metadata" and path == "/metadata/timestamp.json":
            return 200, {}, ((b"{" + b" " * 65535, 0.0) for _ in range(6400))  # 400 MiB, no length
        return None

    expected = {  # case -> (exit code, words of the outcome)
        "timestamp bomb": (3, "Content-Encoding 'zstd'"),
        "model bomb": (1, "Content-Encoding 'zstd'"),
        "trickled headers": (1, "under the minimum"),
        "endless metadata": (3, "longer than allowed"),
    }
    current = [""]
    peaks = {}
    with HostileServer(setup.repo_path, hostile) as server:
        for case, (code, words) in expected.items():
            current[0] = case
            result, peaks[case] = once(setup, server.url, "--min-rate", "2000", "--rate-window", "1")
            assert result.returncode == code and words in result.stdout, (case, result.stdout, result.stderr[-2000:])
    print("peak RSS, MB:", {case: round(mb) for case, mb in peaks.items()})
    assert max(peaks.values()) < PEAK_RSS_LIMIT_MB, peaks
    assert setup.active() is None
