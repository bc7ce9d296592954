"""What a hostile mirror did to the device at 2f41b66 (issue 28, delivery): compressed answers and
headers trickled a byte at a time. Each against a real server on 127.0.0.1; the agent's memory is
measured in a child process."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeopt.device.agent import Agent
from edgeopt.device.fetch import Limits
from tests.delivery_helpers import HostileServer, ServerThread, TrickledHeaders
from tests.test_delivery import Setup, runs  # noqa: F401  (runs: the fixture Setup needs)

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
    (tmp_path / "token").write_text("t")

    def trickle(path, data, headers):
        hit = {"metadata": path == "/metadata/timestamp.json", "model": path.endswith(".model") and data is not None,
               "report": path == "/status"}[where]
        return (200, {}, TrickledHeaders(TRICKLE_S)) if hit else None

    with HostileServer(setup.repo_path, trickle) as hostile:
        agent = setup.agent(hostile.url, limits=FAST, token_file=tmp_path / "token")
        outcome, seconds = in_thread(agent)
        requests = list(hostile.requests)
    if where == "report":  # the check itself completed; its report was cut, and the agent went on
        assert str(outcome) == "activated release 1" and "POST /status" in requests
    else:
        assert outcome.kind == "retry" and "slow retrieval" in str(outcome) and "under the minimum" in str(outcome), outcome
    assert seconds < 30  # a window of 1 s, not the minutes of a whole deadline


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
