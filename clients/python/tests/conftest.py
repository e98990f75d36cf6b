"""Runs the real driftd binary for the tests.

The binary is $DRIFTD_BIN, by default <repo>/target/debug/driftd (what
`cargo build` / `cargo test` produce). Without it the end-to-end tests are
skipped loudly, or fail when DRIFTD_REQUIRE_E2E=1 (as in CI).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT = 20.0


@dataclass
class Daemon:
    grpc_addr: str
    http_addr: str
    process: subprocess.Popen
    log_lines: List[str] = field(default_factory=list)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_lines[-n:])


def _binary() -> Path:
    return Path(os.environ.get("DRIFTD_BIN") or REPO / "target" / "debug" / "driftd")


@pytest.fixture(scope="session")
def daemon(tmp_path_factory) -> Daemon:
    binary = _binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        message = (
            f"\n{'!' * 70}\n!! driftd binary not found at {binary}: end-to-end tests NOT RUN.\n"
            "!! Build it with `cargo build --bin driftd` in the repository root, or set DRIFTD_BIN.\n"
            f"{'!' * 70}"
        )
        if os.environ.get("DRIFTD_REQUIRE_E2E") == "1":
            pytest.fail(message + "\n(DRIFTD_REQUIRE_E2E=1, so this is a failure)", pytrace=False)
        pytest.skip(message)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    env.update(
        DRIFTD_STORE__PATH=str(tmp_path_factory.mktemp("driftd-data")),
        DRIFTD_SERVER__GRPC_ADDR="127.0.0.1:0",
        DRIFTD_SERVER__HTTP_ADDR="127.0.0.1:0",
        DRIFTD_LOG="info",
        DRIFTD_EVALUATION__INTERVAL="100ms",
        DRIFTD_EVALUATION__MIN_SAMPLES="20",
        # Small, so a test's rows fill the warm-up reference; the window is
        # larger than any test's rows, so it holds every row sent after the
        # warm-up.
        DRIFTD_REFERENCE__WARMUP_SAMPLES="50",
        DRIFTD_WINDOW__WINDOWS="count:2000",
    )
    proc = subprocess.Popen(
        [str(binary), "--log-format", "json"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    seen: List[str] = []

    def pump() -> None:
        # Keep reading for the daemon's whole life so it never blocks on a
        # full stderr pipe.
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            lines.put(line)

    threading.Thread(target=pump, name="driftd-stderr", daemon=True).start()

    addrs = {}
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while len(addrs) < 2:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            proc.kill()
            pytest.fail(
                f"driftd did not log its listening addresses within {STARTUP_TIMEOUT}s "
                f"(exit status {proc.poll()}); stderr:\n" + "\n".join(seen[-30:]),
                pytrace=False,
            )
        try:
            line = lines.get(timeout=min(remaining, 0.2))
        except queue.Empty:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message") or record.get("fields", {}).get("message")
        addr = record.get("addr") or record.get("fields", {}).get("addr")
        if message == "gRPC server listening":
            addrs["grpc"] = addr
        elif message == "HTTP server listening":
            addrs["http"] = addr

    d = Daemon(addrs["grpc"], addrs["http"], proc, seen)
    yield d

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def model_name(request) -> str:
    """A model name unique to the test, so tests share one daemon safely."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", request.node.name[:80]) + "-" + uuid.uuid4().hex[:8]


@pytest.fixture
def silent_server():
    """A loopback address that accepts TCP connections but never answers:
    gRPC calls to it hang until their deadline. Deterministic, unlike a
    guessed closed port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes handshakes; nobody reads
    yield "127.0.0.1:%d" % sock.getsockname()[1]
    sock.close()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Polls predicate until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
