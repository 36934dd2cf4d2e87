"""The spec's two sample clients, ported to Python 3, against a real daemon process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import REPO, Daemon
from images import jpeg

from same_search.contsign import ContSign

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("examples"))
    d.start()
    yield d
    d.stop()


def run(daemon: Daemon, script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "AS_SERVER": daemon.url("search", "")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_retrieval_sample_client_end_to_end(daemon, tmp_path):
    (tmp_path / "query.jpg").write_bytes(jpeg(11))
    (tmp_path / "other.jpg").write_bytes(jpeg(12))
    client = "same_private_example_add_remove.py"
    assert json.loads(run(daemon, client, "signup", cwd=tmp_path))["err_no"] == 0
    assert json.loads(run(daemon, client, "signup", cwd=tmp_path))["err_no"] == 104
    added = json.loads(run(daemon, client, "rts_as_add", cwd=tmp_path))
    assert added["err_no"] == 0
    assert json.loads(run(daemon, client, "rts_as_add", cwd=tmp_path))["err_no"] == 101
    assert json.loads(run(daemon, client, "rts_as_add", "other.jpg", cwd=tmp_path))["err_no"] == 0
    assert json.loads(run(daemon, client, "rts_as_update", cwd=tmp_path))["err_no"] == 0
    found = json.loads(run(daemon, client, "rts_as_search", cwd=tmp_path))
    assert found["err_no"] == 0 and found["has_more"] == 0 and len(found["data_items"]) == 2
    top = found["data_items"][0]
    assert top["contsign"] == ContSign.of_image(jpeg(11)).to_json() and top["score"] > 0.999
    assert {f["fea_id"] for f in top["features"]} == {1000, 999}
    snap = json.loads(run(daemon, client, "rts_as_snapshot", cwd=tmp_path))
    assert snap["snapshot"]["index_size"] == 2
    sign = ContSign.of_image(jpeg(11))
    assert (
        json.loads(run(daemon, client, "rts_as_delete", f"{sign.sign1},{sign.sign2}", cwd=tmp_path))["err_no"]
        == 0
    )
    assert json.loads(run(daemon, client, "rts_as_snapshot", cwd=tmp_path))["snapshot"]["index_size"] == 1


def test_feature_sample_client(daemon, tmp_path):
    (tmp_path / "query.jpg").write_bytes(jpeg(13))
    out = run(
        daemon,
        "same_private_example.py",
        "calfeature_remote",
        "query.jpg",
        f"127.0.0.1:{daemon.ports['feature']}",
        cwd=tmp_path,
    )
    assert "time cost" in out
    lengths = {int(line.split()[0]): int(line.split()[-1]) for line in out.splitlines() if line[:4].isdigit()}
    assert lengths[2001] == 1280 * 4 and lengths[2002] == 8
