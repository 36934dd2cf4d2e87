"""SIGKILL at random moments under concurrent writes: nothing acknowledged is ever lost.

Several client threads add, update and remove their own images while the daemon snapshots its
indexes every 0.3 s; the daemon is killed with SIGKILL at a random moment (so sometimes in the
middle of an index save), restarted over the same data dir, and every item must be exactly as
last acknowledged, or as the one request in flight at the kill would have left it.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import urllib.error

from conftest import b64
from daemon import Daemon
from images import jpeg

from same_search.contsign import ContSign

CLIENTS = 4
IMAGES_PER_CLIENT = 8
CYCLES = 5

Absent = None  # an item's state is its brief (bytes) when stored, None when not


class Client(threading.Thread):
    """Random writes on its own images; remembers what was acknowledged and what is in flight."""

    def __init__(
        self, daemon: Daemon, images: list[bytes], state: dict[int, bytes | None], seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.daemon_proc, self.images, self.state = daemon, images, state
        self.rng = random.Random(seed)
        self.in_flight: tuple[int, bytes | None] | None = None
        self.stop = threading.Event()
        self.acked = 0

    def run(self) -> None:
        while not self.stop.is_set():
            index = self.rng.randrange(len(self.images))
            image = self.images[index]
            key = ContSign.of_image(image).key
            current = self.state[key]
            if current is Absent:
                brief = f"v{self.rng.randrange(10**6)}".encode()
                route, body, after = (
                    "add",
                    {"image": b64(image), "features": [{"fea_id": 1000, "fea_data": b64(brief)}]},
                    brief,
                )
            elif self.rng.random() < 0.5:
                brief = f"u{self.rng.randrange(10**6)}".encode()
                route, body, after = (
                    "update",
                    {"image": b64(image), "features": [{"fea_id": 1000, "fea_data": b64(brief)}]},
                    brief,
                )
            else:
                route, body, after = "remove", {"contsign": ContSign.of_image(image).to_json()}, Absent
            self.in_flight = (key, after)
            try:
                answer = self.daemon_proc.rts(route, appid="lib", **body)
            except (urllib.error.URLError, ConnectionError, OSError):
                return  # killed: this request stays "in flight"
            assert answer["err_no"] == 0, (route, answer)
            self.state[key] = after
            self.in_flight = None
            self.acked += 1


def stored_items(daemon: Daemon) -> dict[int, bytes]:
    body = daemon.rts("search", appid="lib", image=b64(jpeg(0, (64, 48))), rn=1000)
    assert body["err_no"] == 0
    return {
        ContSign(**item["contsign"]).key: base64.b64decode(item["features"][0]["fea_data"])
        for item in body["data_items"]
    }


def test_random_sigkill_cycles_lose_nothing_acknowledged(tmp_path):
    daemon = Daemon(tmp_path, "[storage]\nsnapshot_interval_s = 0.3\n[model]\nmax_wait_ms = 5.0\n")
    images = [[jpeg(1000 + c * 100 + i, (64, 48)) for i in range(IMAGES_PER_CLIENT)] for c in range(CLIENTS)]
    state: dict[int, bytes | None] = {ContSign.of_image(img).key: Absent for group in images for img in group}
    rng = random.Random(7)
    daemon.start()
    daemon.rts("signup", appid="lib")
    try:
        total_acked = 0
        for cycle in range(CYCLES):
            clients = [Client(daemon, images[c], state, seed=cycle * 10 + c) for c in range(CLIENTS)]
            for client in clients:
                client.start()
            time.sleep(rng.uniform(1.0, 3.0))
            daemon.kill()
            for client in clients:
                client.stop.set()
                client.join(60)
            total_acked += sum(c.acked for c in clients)
            daemon.start()
            actual = stored_items(daemon)
            in_flight = {c.in_flight[0]: c.in_flight[1] for c in clients if c.in_flight is not None}
            for key, acknowledged in state.items():
                found = actual.get(key, Absent)
                allowed = {acknowledged} | ({in_flight[key]} if key in in_flight else set())
                assert found in allowed, (cycle, key, found, allowed)
                state[key] = found  # the next cycle starts from what is really there
            snapshot = daemon.rts("snapshot", appid="lib")["snapshot"]
            assert snapshot["index_size"] == len(actual)
            for key in actual:  # every stored item is searchable by its own vector
                hit = daemon.rts("search", appid="lib", contsign=ContSign.from_key(key).to_json(), rn=1)
                assert ContSign(**hit["data_items"][0]["contsign"]).key == key
        assert total_acked >= 20, "the clients barely ran; the test proved little"
        log = daemon.log.read_text()
        assert log.count("same_search ready") == CYCLES + 1
    finally:
        daemon.stop()
