"""One daemon per data dir, and a clear word when a port is taken (the real daemon process)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.datadir import DataDirInUse, DataDirLock


@pytest.fixture
def first(tmp_path: Path):
    (tmp_path / "first").mkdir()
    d = Daemon(tmp_path / "first")
    yield d
    d.stop()


def second_on(tmp_path: Path, data_dir: Path) -> Daemon:
    """Another daemon (own ports, own log) pointed at ``data_dir``."""
    (tmp_path / "second").mkdir(exist_ok=True)
    d = Daemon(tmp_path / "second")
    d.data_dir = data_dir
    return d


def test_second_daemon_on_the_same_data_dir_is_refused_naming_the_holder(first, tmp_path):
    first.start()
    first.rts("signup", appid="lib")
    second = second_on(tmp_path, first.data_dir)
    try:
        assert second.run_to_exit() == 5
    finally:
        second.stop()
    log = second.log.read_text()
    assert f"is in use by another same_search (pid {first.proc.pid} on host" in log, log
    assert "started 20" in log and "--data-dir" in log
    # The holder goes on serving untouched.
    assert first.rts("snapshot", appid="lib")["err_no"] == 0
    holder = json.loads((first.data_dir / ".lock").read_text())
    assert holder["pid"] == first.proc.pid


def test_restart_after_kill_9_is_not_blocked_by_the_lock_file(first, tmp_path):
    first.start()
    first.rts("signup", appid="lib")
    assert first.rts("add", appid="lib", image=b64(jpeg(1)), features=[brief("one")])["err_no"] == 0
    killed = first.proc.pid
    first.kill()
    assert json.loads((first.data_dir / ".lock").read_text())["pid"] == killed  # stale file left
    first.start()
    assert first.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 1
    assert json.loads((first.data_dir / ".lock").read_text())["pid"] == first.proc.pid


def test_port_in_use_is_reported_as_such(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        d = Daemon(tmp_path)
        d.ports["search"] = port
        try:
            assert d.run_to_exit() == 4
        finally:
            d.stop()
    log = d.log.read_text()
    assert (
        f"port {port} (search service, 127.0.0.1) is already in use by another program; "
        "choose another with --search-port or stop it"
    ) in log, log
    assert "writable" not in log and "disk" not in log


def test_lock_in_one_process_names_the_holder(tmp_path):
    """Two opens in one process are two lock holders too (flock is per open file)."""
    with DataDirLock(tmp_path), pytest.raises(DataDirInUse, match=f"pid {os.getpid()} on host"):
        DataDirLock(tmp_path).acquire()
    with DataDirLock(tmp_path):  # released: free again
        pass
