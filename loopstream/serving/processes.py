"""Start, wait for, and stop the service processes (tritonserver, tracker) like a supervisor would.

Shutdown is SIGTERM first, then SIGKILL after a timeout: an open client stream can block
tritonserver's graceful shutdown forever (DESIGN.md section 3), and nothing may be left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, BinaryIO


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for servers that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """A child process with a readiness check and a bounded, escalating stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        lock: IO[str] | None = None,
    ) -> None:
        """``lock``: a file whose lock the process holds while it runs (closed when it stops)."""
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log: BinaryIO | None = None
        self._lock = lock

    def start(self) -> ServiceProcess:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
                # Its own process group, which its children (Triton's stubs) join: a Ctrl-C in
                # the terminal reaches us, we stop it in order, and killpg reaches every one.
                start_new_session=True,
            )
        except OSError:
            self._release()
            raise
        return self

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``is_ready`` until it holds; fail early, with the log's tail, if the process died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it was ready"
                    f"{self._log_tail()}"
                )
            with contextlib.suppress(Exception):
                if is_ready():
                    return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} was not ready after {timeout_s:.0f} s{self._log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the whole process group."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # Children of a stopped server (e.g. Triton's Python-backend stubs) must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._release()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would: for failure drills."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._release()

    def _release(self) -> None:
        for handle in (self._log, self._lock):
            if handle is not None:
                handle.close()
        self._log = self._lock = None

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
