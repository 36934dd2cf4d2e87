"""Several daemon processes over one Milvus (milvus-lite serving on a loopback port), and a
library moved from a local daemon into a Milvus-backed one with ``export`` / ``import``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon, free_port
from images import jpeg, near_duplicate

from same_search.cli import main
from same_search.contsign import ContSign

MODEL = '[model]\nname = "efficientnet_lite0"\n'


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("milvus-lite server did not listen")


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m milvus_lite server`` as its own process: the one Milvus both daemons share."""
    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server")
    log = (data / "server.log").open("w")
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data / "db")]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _milvus_daemon(root: Path, uri: str) -> Daemon:
    return Daemon(root, f'{MODEL}[storage]\nbackend = "milvus"\nuri = "{uri}"\ndb_name = "shared"\n')


@pytest.fixture(scope="module")
def pair(milvus_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    """Two daemons, each with its own data dir and model, over the same Milvus database."""
    first = _milvus_daemon(tmp_path_factory.mktemp("first"), milvus_server)
    second = _milvus_daemon(tmp_path_factory.mktemp("second"), milvus_server)
    try:
        first.start(wait=False)
        second.start(wait=False)
        first.wait_ready(180)
        second.wait_ready(180)
        yield first, second
    finally:
        first.stop()
        second.stop()


def add(d: Daemon, appid: str, seed: int, text: str) -> dict:
    return d.rts("add", appid=appid, image=b64(jpeg(seed)), features=[brief(text)])


def keys(body: dict) -> list[tuple[int, int]]:
    return [(i["contsign"]["sign1"], i["contsign"]["sign2"]) for i in body["data_items"]]


def test_writes_on_one_daemon_are_seen_at_once_by_the_other(pair: tuple[Daemon, Daemon]) -> None:
    first, second = pair
    assert first.get("admin", "/healthz")["backend"] == "milvus"
    assert first.rts("signup", appid="shared")["err_no"] == 0
    assert second.rts("signup", appid="shared")["err_no"] == 104  # created by the other daemon
    for seed in range(4):
        assert add(first, "shared", seed, f"item {seed}")["err_no"] == 0
    found = second.rts("search", appid="shared", image=b64(jpeg(2)), rn=10)
    assert found["err_no"] == 0 and len(found["data_items"]) == 4
    assert keys(found)[0] == sign(2)
    assert found["data_items"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert add(second, "shared", 1, "again")["err_no"] == 101  # stored through the other daemon

    removed = second.rts("remove", appid="shared", image=b64(jpeg(2)))
    assert removed["err_no"] == 0
    after = first.rts("search", appid="shared", image=b64(jpeg(2)), rn=10)
    assert sign(2) not in keys(after) and len(after["data_items"]) == 3
    assert first.rts("update", appid="shared", image=b64(jpeg(2)), features=[brief("x")])["err_no"] == 102
    assert second.rts("update", appid="shared", image=b64(jpeg(0)), features=[brief("new")])["err_no"] == 0
    item = first.get("admin", "/api/libraries/shared/items/{},{}".format(*sign(0)))
    assert item["item"]["brief_text"] == "new"
    assert first.rts("snapshot", appid="shared")["snapshot"]["index_size"] == 3

    request = urllib.request.Request(
        second.url("admin", "/api/libraries/shared?confirm=shared"), method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["items"] == 3
    assert first.rts("snapshot", appid="shared")["err_no"] == 103  # deleted through the other daemon
    assert "shared" not in [lib["appid"] for lib in first.get("admin", "/api/libraries")["libraries"]]


def test_racing_duplicate_adds_leave_one_item(pair: tuple[Daemon, Daemon]) -> None:
    """The same image added on both daemons at once, several times: one row per image, never an error,
    and at least one of the racing adds answered 0 (docs/scale-out.md: no atomic check-then-insert)."""
    first, second = pair
    assert first.rts("signup", appid="race")["err_no"] == 0
    seeds = range(20, 28)
    with ThreadPoolExecutor(8) as pool:
        futures = [
            (seed, pool.submit(add, daemon, "race", seed, f"{name} {seed}"))
            for seed in seeds
            for name, daemon in (("first", first), ("second", second))
        ]
        answers: dict[int, list[int]] = {}
        for seed, future in futures:
            answers.setdefault(seed, []).append(future.result()["err_no"])
    for seed, codes in answers.items():
        assert sorted(codes) in ([0, 0], [0, 101]), (seed, codes)
    everything = second.rts("search", appid="race", image=b64(jpeg(20)), rn=100)
    assert sorted(keys(everything)) == sorted(sign(s) for s in seeds)
    assert first.rts("snapshot", appid="race")["snapshot"]["index_size"] == len(seeds)


def test_a_library_moves_from_local_to_milvus_without_embedding(
    pair: tuple[Daemon, Daemon], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = pair
    (tmp_path / "local").mkdir()
    local = Daemon(tmp_path / "local", MODEL)
    try:
        local.start()
        assert local.rts("signup", appid="moving")["err_no"] == 0
        for seed in range(40, 52):
            tags = [{"fea_id": 999, "fea_data": b64(bytes([seed % 3, 0, 0, 0, 7, 0, 0, 0]))}]
            body = local.rts(
                "add", appid="moving", image=b64(jpeg(seed)), features=[brief(f"m{seed}"), *tags]
            )
            assert body["err_no"] == 0
        archive = tmp_path / "moving.zip"
        assert main(["export", "--appid", "moving", "--out", str(archive), "--vectors", *_ports(local)]) == 0
        embedded_before = embedded(first)
        assert main(["import", str(archive), "--appid", "moving", *_ports(first)]) == 0
        assert "imported 12 items into moving" in capsys.readouterr().out

        queries = [{"image": b64(near_duplicate(jpeg(s)))} for s in (40, 45, 51)]
        queries += [{"contsign": ContSign.of_image(jpeg(44)).to_json()}]
        queries += [
            {
                "image": b64(jpeg(47)),
                "features": [{"fea_id": 999, "fea_data": b64(bytes(4) + bytes([7, 0, 0, 0]))}],
            }
        ]
        for query in queries:
            want = local.rts("search", appid="moving", rn=20, **query)
            got = second.rts("search", appid="moving", rn=20, **query)
            assert want["err_no"] == got["err_no"] == 0
            assert [(i["contsign"], i["features"]) for i in got["data_items"]] == [
                (i["contsign"], i["features"]) for i in want["data_items"]
            ]
            for a, b in zip(got["data_items"], want["data_items"], strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert embedded(first) == embedded_before  # stored from the export's vectors
    finally:
        local.stop()


def _ports(d: Daemon) -> list[str]:
    return [
        flag for name in ("search", "feature", "admin") for flag in (f"--{name}-port", str(d.ports[name]))
    ]


def embedded(d: Daemon) -> float:
    """The daemon's count of embedded images, from /metrics."""
    with urllib.request.urlopen(d.url("admin", "/metrics"), timeout=10) as response:
        text = response.read().decode()
    return float(
        next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith("same_search_embedded_images_total")
        )
    )


def sign(seed: int) -> tuple[int, int]:
    c = ContSign.of_image(jpeg(seed))
    return c.sign1, c.sign2


def test_a_daemon_without_its_milvus_refuses_to_start(tmp_path: Path) -> None:
    """Nothing listens at the configured uri: exit 6 and a log line naming it, not a traceback."""
    uri = f"http://127.0.0.1:{free_port()}"
    daemon = _milvus_daemon(tmp_path, uri)
    assert daemon.run_to_exit(180) == 6
    assert f"cannot start: cannot use Milvus at '{uri}'" in daemon.log.read_text()
