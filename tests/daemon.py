"""Run the real daemon as a subprocess (``python -m same_search``) and talk HTTP to it."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from same_search.client import Client

REPO = Path(__file__).resolve().parent.parent


#: Daemons listen below the kernel's ephemeral range (32768-60999 by default), each test worker in
#: a block of its own: a port the OS handed out with bind(0) could be handed out again, as the
#: local port of any client connection, while a daemon is down between a kill and its restart on
#: the same ports, and that restart then failed with "port in use".
PORT_BLOCK = 2000
FIRST_PORT = 12000
_next_port = itertools.count()


def free_port() -> int:
    """A port no other test worker hands out and no outgoing connection takes, free right now."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = FIRST_PORT + (PORT_BLOCK * (int(worker) if worker.isdigit() else 0)) % 20000
    for _ in range(PORT_BLOCK):
        port = base + next(_next_port) % PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {base}-{base + PORT_BLOCK - 1}")


#: Set to 1 to start every daemon as its own ``python -m same_search`` (no shared imports).
FRESH_ENV = "SAME_SEARCH_TEST_FRESH_DAEMONS"
PR_SET_CHILD_SUBREAPER = 36


class ForkedDaemon:
    """The few ``subprocess.Popen`` methods the tests use, for a daemon forked by tests/zygote.py.

    The daemon is this process's child (it is a child subreaper), so ``waitpid`` gives its exit
    status exactly as for a Popen: the code it exited with, or minus the signal that killed it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["same_search", str(self.pid)], timeout or 0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """tests/zygote.py for this test worker: started at the first daemon, asked for each one."""

    _proc: subprocess.Popen | None = None
    _lock = threading.Lock()

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], log: Path) -> ForkedDaemon:
        with cls._lock:
            if cls._proc is None or cls._proc.poll() is not None:
                if ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                    raise OSError("prctl(PR_SET_CHILD_SUBREAPER) failed")
                cls._proc = subprocess.Popen(
                    [sys.executable, "-u", str(Path(__file__).with_name("zygote.py"))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=REPO,
                    text=True,
                )
            assert cls._proc.stdin is not None and cls._proc.stdout is not None
            request = {"argv": argv, "env": env, "cwd": str(REPO), "log": str(log)}
            cls._proc.stdin.write(json.dumps(request) + "\n")
            cls._proc.stdin.flush()
            return ForkedDaemon(int(cls._proc.stdout.readline()))


class Daemon:
    """One daemon process over a data dir, on three free ports.

    Started as a fork of tests/zygote.py (the libraries already imported) unless ``fresh`` or
    ``SAME_SEARCH_TEST_FRESH_DAEMONS=1`` asks for a new interpreter: ``python -m same_search``."""

    def __init__(self, workdir: Path, config_text: str = "", fresh: bool = False) -> None:
        self.fresh = fresh or os.environ.get(FRESH_ENV) == "1"
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.config = workdir / "config.toml"
        self.config.write_text(config_text)
        self.log = workdir / "daemon.log"
        self.ports = {"feature": free_port(), "search": free_port(), "admin": free_port()}
        self.proc: subprocess.Popen | ForkedDaemon | None = None

    def start(self, wait: bool = True, timeout: float = 120.0) -> None:
        args = [
            "--config",
            str(self.config),
            "--data-dir",
            str(self.data_dir),
            "--feature-port",
            str(self.ports["feature"]),
            "--search-port",
            str(self.ports["search"]),
            "--admin-port",
            str(self.ports["admin"]),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.fresh:
            with self.log.open("a") as log:
                command = [sys.executable, "-m", "same_search", *args]
                self.proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        else:
            self.proc = Zygote.spawn(args, env, self.log)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("admin", "/healthz")["err_no"] == 0:
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.log.read_text()}")

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def get(self, service: str, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(service, path), timeout=10) as response:
            return json.loads(response.read())

    def post(self, service: str, path: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        body = {"from": "pytest", **body}
        request = urllib.request.Request(
            self.url(service, path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},  # the management port requires it
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            assert response.status == 200
            return json.loads(response.read())

    def rts(self, route: str, **body: Any) -> dict[str, Any]:
        return self.post("search", f"/RTSAsService/{route}", body)

    def client(self, appid: str | None = None) -> Client:
        """A blocking :class:`same_search.client.Client` for this daemon's three ports."""
        ports = self.ports
        return Client("127.0.0.1", ports["search"], ports["feature"], ports["admin"], appid=appid)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, like a power cut for the process."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Ask the daemon to stop (SIGTERM or SIGINT) and return its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def run_to_exit(self, timeout: float = 120) -> int:
        """Start and wait for the process to end by itself (start-up refusals)."""
        self.start(wait=False)
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
