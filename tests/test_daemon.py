"""The real daemon process: ports, signals, restarts, crashes, corrupted snapshots, refusals."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.contsign import ContSign


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path, "[storage]\nsnapshot_interval_s = 0.5\n")
    yield d
    d.stop()


def add(d: Daemon, seed: int, text: str = "") -> dict:
    return d.rts("add", appid="lib", image=b64(jpeg(seed)), features=[brief(text or f"item-{seed}")])


def contents(d: Daemon) -> dict[tuple[int, int], str]:
    """contsign -> brief of everything in 'lib', read back through search."""
    import base64

    items = d.rts("search", appid="lib", image=b64(jpeg(0)), rn=1000)["data_items"]
    return {
        (i["contsign"]["sign1"], i["contsign"]["sign2"]): base64.b64decode(
            i["features"][0]["fea_data"]
        ).decode()
        for i in items
    }


def sign(seed: int) -> tuple[int, int]:
    c = ContSign.of_image(jpeg(seed))
    return c.sign1, c.sign2


def test_three_ports_each_serve_their_own_service(daemon):
    daemon.start()
    health = daemon.get("admin", "/healthz")
    assert health["model"]["id"] == "efficientnet_lite0" and health["libraries"] == 0
    assert daemon.rts("signup", appid="lib")["err_no"] == 0
    wrong = daemon.post("feature", "/RTSAsService/snapshot", {"appid": "lib"})
    assert wrong["err_no"] == 1 and "not served on port" in wrong["err_msg"]
    wrong = daemon.post("search", "/GeneralClassifyService/classify", {"data": ""})
    assert wrong["err_no"] == 1
    log = daemon.log.read_text()
    assert "falling back to EfficientNet-Lite0" in log  # resnet50 is the default; no weights here


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_restart_loads_without_replay(daemon, sig):
    daemon.start()
    daemon.rts("signup", appid="lib")
    for seed in range(4):
        assert add(daemon, seed)["err_no"] == 0
    daemon.rts("update", appid="lib", image=b64(jpeg(1)), features=[brief("updated")])
    daemon.rts("remove", appid="lib", contsign=dict(zip(("sign1", "sign2"), sign(2), strict=True)))
    before = contents(daemon)
    assert daemon.terminate(sig) == 0
    assert "index saved" in daemon.log.read_text()
    daemon.start()
    assert contents(daemon) == before
    assert before[sign(1)] == "updated" and sign(2) not in before
    assert daemon.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 3
    second_start = daemon.log.read_text().split("same_search ready")[1]
    assert "rebuilding" not in second_start and "replayed" not in second_start


def wait_for(condition, what: str, timeout: float = 30.0, every: float = 0.05):
    """Poll ``condition()`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g}s: {what}")


def test_kill_9_loses_nothing_acknowledged(daemon):
    daemon.start()
    daemon.rts("signup", appid="lib")
    for seed in range(3):
        add(daemon, seed)
    # The premise: a periodic snapshot holds seeds 0-2 before the later writes (its log line).
    wait_for(lambda: "library lib: index saved (3 items" in daemon.log.read_text(), "a snapshot of 3 items")
    for seed in range(3, 6):
        add(daemon, seed)
    daemon.rts("remove", appid="lib", image=b64(jpeg(0)))
    expected = contents(daemon)
    daemon.kill()
    daemon.start()
    assert contents(daemon) == expected
    assert sign(0) not in expected and len(expected) == 5
    assert daemon.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 5
    restart = daemon.log.read_text().split("same_search ready")[-2]  # the second start's lines
    assert "rebuilding" not in restart  # the snapshot was loaded, the rest replayed from SQLite


@pytest.mark.heavy
def test_corrupted_snapshot_is_rebuilt_from_the_database(daemon):
    daemon.start()
    daemon.rts("signup", appid="lib")
    for seed in range(4):
        add(daemon, seed)
    expected = contents(daemon)
    assert daemon.terminate() == 0
    graph = next((daemon.data_dir / "indexes").glob("*.hnsw"))
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))
    daemon.start()
    assert "rebuilding from the database" in daemon.log.read_text()
    assert contents(daemon) == expected
    assert daemon.terminate() == 0
    graph.write_bytes(bytes(raw[: len(raw) // 3]))  # truncated
    daemon.start()
    assert contents(daemon) == expected


def test_library_of_a_model_not_served_is_set_aside_not_mixed(daemon):
    """Never served with another model's vectors, and never a failed start: the
    library is set aside (err_no 6, named in /healthz) while the others serve."""
    daemon.start()
    daemon.rts("signup", appid="lib")
    daemon.rts("signup", appid="other")
    assert daemon.terminate() == 0
    with sqlite3.connect(daemon.data_dir / "same_search.sqlite3") as db:
        db.execute(
            "UPDATE libraries SET model_id='resnet50', fingerprint='0123456789abcdef', dim=2048 "
            "WHERE appid='lib'"
        )
    daemon.start()
    health = daemon.get("admin", "/healthz")
    assert health["status"] == "degraded"
    [aside] = health["unavailable"]
    assert aside["appid"] == "lib" and "0123456789abcdef" in aside["reason"] and "[models." in aside["reason"]
    answer = add(daemon, 1)
    assert answer["err_no"] == 6 and "resnet50" in answer["err_msg"]
    assert daemon.rts("add", appid="other", image=b64(jpeg(1)), features=[brief("x")])["err_no"] == 0


def test_no_real_weights_refuses_to_start(tmp_path):
    d = Daemon(tmp_path, '[model]\nname = "resnet50"\nfallback_to_lite0 = false\n')
    assert d.run_to_exit() == 3
    assert "no weights for resnet50" in d.log.read_text()


class HeldPictures:
    """A picture server on 127.0.0.2 that answers each request only when released: a daemon adding
    by ``url`` from it keeps those requests in flight for as long as the test wants."""

    HOST = "127.0.0.2"

    def __init__(self, pictures: dict[str, bytes]) -> None:
        import http.server
        import threading

        self.arrived = threading.Semaphore(0)
        self.release = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                picture = pictures[self.path.strip("/").removesuffix(".jpg")]
                held.arrived.release()
                held.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(picture)))
                self.end_headers()
                self.wfile.write(picture)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((self.HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://{self.HOST}:{self.server.server_address[1]}/{name}.jpg"

    def wait_arrived(self, count: int, timeout: float = 60.0) -> None:
        for _ in range(count):
            assert self.arrived.acquire(timeout=timeout), "the daemon did not fetch the picture"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    """Two adds are in flight for certain when SIGTERM arrives (each waits for its picture from a
    server the test holds), and both finish and are stored after it."""
    import threading

    daemon = Daemon(tmp_path, f'[fetch]\nenabled = true\nallow = ["{HeldPictures.HOST}/32"]\n')
    pictures = HeldPictures({"first": jpeg(42, (2000, 1500)), "second": jpeg(43, (1800, 1400))})
    try:
        daemon.start()
        daemon.rts("signup", appid="lib")
        answers: list[tuple[float, dict]] = []

        def add_by_url(name: str) -> None:
            answer = daemon.rts("add", appid="lib", url=pictures.url(name), features=[brief(name)])
            answers.append((time.monotonic(), answer))

        threads = [threading.Thread(target=add_by_url, args=(name,)) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        pictures.wait_arrived(2)  # both requests are inside the daemon, waiting for their picture
        signalled = time.monotonic()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down: finishing in-flight requests" in daemon.log.read_text(), "shutdown")
        pictures.release.set()
        for thread in threads:
            thread.join(60)
        assert daemon.proc.wait(60) == 0
        assert [a["err_no"] for _, a in answers] == [0, 0]
        assert all(at > signalled for at, _ in answers)  # answered after the signal: in flight
        daemon.start()
        assert daemon.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 2
    finally:
        pictures.close()
        daemon.stop()


def test_public_address_without_tokens_is_warned_about(tmp_path):
    d = Daemon(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    d.start()
    try:
        log = d.log.read_text()
        assert "reachable from other machines, and [auth] tokens are not set" in log
        assert "admin service listening on http://127.0.0.1" in log
    finally:
        d.stop()


def test_json_logs_carry_request_fields(tmp_path):
    import json

    d = Daemon(tmp_path, '[server]\nlog_format = "json"\n')
    d.start()
    try:
        d.post("search", "/RTSAsService/snapshot", {"appid": "nobody", "logid": 4242})
        d.rts("signup", appid="lib")
        began = time.monotonic()
        d.rts("search", appid="lib", image=b64(jpeg(3)), logid=4343)  # a forward pass: milliseconds
        client_ms = (time.monotonic() - began) * 1000
    finally:
        d.terminate()
    lines = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logid") == 4242]
    assert access and access[0]["appid"] == "nobody" and access[0]["err_no"] == 103
    assert access[0]["route"] == "/RTSAsService/snapshot"
    [search] = [line for line in lines if line.get("logid") == 4343]
    assert search["route"] == "/RTSAsService/search" and search["err_no"] == 0
    # The request's own time in the daemon: some milliseconds, and no more than the client waited.
    assert 1.0 <= search["latency_ms"] <= client_ms


def test_fp16_on_a_cpu_refuses_to_start_with_a_config_error(tmp_path):
    d = Daemon(tmp_path, '[model]\nname = "efficientnet_lite0"\ndevice = "cpu"\nprecision = "fp16"\n')
    assert d.run_to_exit() == 2
    assert 'precision = "fp16" needs a GPU' in d.log.read_text()
