"""The Milvus backend with ``uri`` a local ``.db`` file (milvus-lite inside the daemon).

Writes from several clients at once must survive ``kill -9`` like the local backend's (the same
writers as tests/test_crash.py); the mode is refused where its open loopback port would bypass
``[auth] tokens``, unless the operator accepts it.
"""

from __future__ import annotations

import pytest
from daemon import Daemon
from images import jpeg
from test_crash import kill_cycles

from same_search.config import ConfigError, from_mapping

CLIENTS = 4
IMAGES_PER_CLIENT = 10
CYCLES = 4


def file_mode(tmp_path, extra: str = "") -> Daemon:
    return Daemon(
        tmp_path,
        '[model]\nname = "efficientnet_lite0"\nmax_wait_ms = 5.0\n'
        f'[storage]\nbackend = "milvus"\nuri = "{tmp_path / "lite.db"}"\n{extra}',
    )


@pytest.mark.heavy
def test_kill_9_under_concurrent_writers_loses_nothing_acknowledged(tmp_path):
    daemon = file_mode(tmp_path)
    images = [[jpeg(2000 + c * 100 + i, (64, 48)) for i in range(IMAGES_PER_CLIENT)] for c in range(CLIENTS)]
    daemon.start(timeout=180)
    daemon.client("lib").signup()
    try:
        acked = kill_cycles(daemon, images, CYCLES, seed=11, pause_s=(0.8, 2.5), start_timeout_s=180)
        assert acked >= 2 * CYCLES, "the clients barely ran; the test proved little"
        log = daemon.log.read_text()
        assert "WAL recovery stopped" not in log
        assert "milvus-lite runs inside this daemon" in log and "without authentication" in log
        assert log.count("same_search ready") == CYCLES + 1
    finally:
        daemon.stop()


LITE = {"storage": {"backend": "milvus", "uri": "/srv/trial/lite.db"}}
TOKENS = {"auth": {"tokens": {"*": "operator-token-of-some-length-0123456789"}}}


def test_tokens_and_file_mode_need_the_operator_to_accept_its_open_port():
    with pytest.raises(ConfigError, match="accept_open_milvus_lite"):
        from_mapping({**LITE, **TOKENS})
    accepted = {"storage": {**LITE["storage"], "accept_open_milvus_lite": True}}
    assert from_mapping({**accepted, **TOKENS}).storage.milvus_file_mode
    assert from_mapping(LITE).storage.milvus_file_mode  # no tokens: nothing to bypass
    served = {"storage": {"backend": "milvus", "uri": "http://milvus:19530"}}
    assert not from_mapping({**served, **TOKENS}).storage.milvus_file_mode


def test_the_daemon_refuses_file_mode_with_tokens_at_start(tmp_path):
    daemon = file_mode(tmp_path, '[auth]\ntokens = { "*" = "operator-token-of-some-length-0123456789" }\n')
    assert daemon.run_to_exit(60) == 2
    assert "accept_open_milvus_lite" in daemon.log.read_text()
