"""SIGKILL at random moments under concurrent writes: nothing acknowledged is ever lost.

Several client threads add, update and remove their own images while the daemon snapshots its
indexes every 0.3 s; the daemon is killed with SIGKILL at a random moment (so sometimes in the
middle of an index save), restarted over the same data dir, and every item must be exactly as
last acknowledged, or as the one request in flight at the kill would have left it.
"""

from __future__ import annotations

import functools
import random
import threading
import time

import pytest
from daemon import Daemon
from images import jpeg

from same_search.client import Client, TransportError
from same_search.contsign import ContSign

CLIENTS = 4
IMAGES_PER_CLIENT = 8
CYCLES = 5

Absent = None  # an item's state is its brief (bytes) when stored, None when not


class Writer(threading.Thread):
    """Random writes on its own images; remembers what was acknowledged and what is in flight."""

    def __init__(
        self, daemon: Daemon, images: list[bytes], state: dict[int, bytes | None], seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.api, self.images, self.state = daemon.client("lib"), images, state
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
                after = f"v{self.rng.randrange(10**6)}".encode()
                request = functools.partial(self.api.add, image, after)
            elif self.rng.random() < 0.5:
                after = f"u{self.rng.randrange(10**6)}".encode()
                request = functools.partial(self.api.update, image=image, brief=after)
            else:
                after = Absent
                request = functools.partial(self.api.remove, contsign=ContSign.of_image(image))
            self.in_flight = (key, after)
            try:
                request()  # any err_no other than 0 raises, as the assertion on it did
            except TransportError:
                return  # killed: this request stays "in flight"
            self.state[key] = after
            self.in_flight = None
            self.acked += 1


def stored_items(api: Client) -> dict[int, bytes]:
    hits = api.search(image=jpeg(0, (64, 48)), rn=1000)  # raises unless err_no is 0
    return {hit.contsign.key: hit.brief for hit in hits}


def kill_cycles(
    daemon: Daemon,
    images: list[list[bytes]],
    cycles: int,
    seed: int,
    pause_s: tuple[float, float] = (0.3, 1.5),
    start_timeout_s: float = 120.0,
) -> int:
    """``cycles`` times: one :class:`Writer` per group of ``images``, a SIGKILL after a random
    pause, a restart; then every item must be as last acknowledged (or as the request in flight
    at the kill would have left it) and searchable by its own vector. Returns the writes
    acknowledged. The daemon must be started, with the library ``lib`` signed up."""
    state: dict[int, bytes | None] = {ContSign.of_image(img).key: Absent for group in images for img in group}
    rng = random.Random(seed)
    api = daemon.client("lib")
    total_acked = 0
    for cycle in range(cycles):
        clients = [Writer(daemon, group, state, seed=seed + cycle * 10 + c) for c, group in enumerate(images)]
        for client in clients:
            client.start()
        # Every cycle kills a daemon that took writes, however loaded the machine: the random
        # pause starts once the clients have two acknowledged writes in this cycle.
        deadline = time.monotonic() + 60
        while sum(c.acked for c in clients) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(*pause_s))
        daemon.kill()
        for client in clients:
            client.stop.set()
            client.join(60)
        total_acked += sum(c.acked for c in clients)
        daemon.start(timeout=start_timeout_s)
        actual = stored_items(api)
        in_flight = {c.in_flight[0]: c.in_flight[1] for c in clients if c.in_flight is not None}
        lost = []
        for key, acknowledged in state.items():
            found = actual.get(key, Absent)
            allowed = {acknowledged} | ({in_flight[key]} if key in in_flight else set())
            if found not in allowed:
                lost.append((key, found, allowed))
            state[key] = found  # the next cycle starts from what is really there
        assert not lost, (cycle, f"{len(lost)} of {len(state)} items not as acknowledged", lost[:3])
        snapshot = api.snapshot()
        assert snapshot["index_size"] == len(actual)
        for key in actual:  # every stored item is searchable by its own vector
            hit = api.search(contsign=ContSign.from_key(key), rn=1)
            assert hit[0].contsign.key == key
    return total_acked


@pytest.mark.heavy
def test_random_sigkill_cycles_lose_nothing_acknowledged(tmp_path):
    daemon = Daemon(tmp_path, "[storage]\nsnapshot_interval_s = 0.3\n[model]\nmax_wait_ms = 5.0\n")
    images = [[jpeg(1000 + c * 100 + i, (64, 48)) for i in range(IMAGES_PER_CLIENT)] for c in range(CLIENTS)]
    daemon.start()
    daemon.client("lib").signup()
    try:
        acked = kill_cycles(daemon, images, CYCLES, seed=7)
        assert acked >= 2 * CYCLES, "the clients barely ran; the test proved little"
        log = daemon.log.read_text()
        assert log.count("same_search ready") == CYCLES + 1
    finally:
        daemon.stop()
