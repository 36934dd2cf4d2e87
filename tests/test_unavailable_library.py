"""No stored row may make a start fail: a library whose rows cannot be loaded is set aside, named,
and repairable, while every other library serves (the real daemon, a really corrupted database)."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.contsign import ContSign

LIBRARIES = {"good": range(0, 3), "broken": range(10, 14), "doomed": range(20, 22), "tagged": range(30, 32)}


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


def admin(d: Daemon, method: str, path: str) -> dict:
    request = urllib.request.Request(d.url("admin", path), method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def corrupt(db: Path, appid: str, seed: int, assignment: str) -> None:
    """Overwrite one row in place, as a bad disk, a hand edit or an older version's import would."""
    key = ContSign.of_image(jpeg(seed)).key
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            f"UPDATE items SET {assignment} WHERE key=? AND lib_id=(SELECT id FROM libraries WHERE appid=?)",
            (key, appid),
        ).rowcount
    assert changed == 1


@pytest.mark.heavy
def test_corrupted_rows_set_one_library_aside_and_repair_brings_it_back(daemon):
    daemon.start()
    for appid, seeds in LIBRARIES.items():
        daemon.rts("signup", appid=appid)
        for seed in seeds:
            assert (
                daemon.rts("add", appid=appid, image=b64(jpeg(seed)), features=[brief(f"{seed}")])["err_no"]
                == 0
            )
    daemon.kill()  # no index snapshot: the next start loads every row from the database
    db = daemon.data_dir / "same_search.sqlite3"
    corrupt(db, "broken", 11, "vector=substr(vector, 1, length(vector) - 4)")  # 1279 floats
    corrupt(db, "broken", 12, "vector=zeroblob(length(vector))")  # right size, norm 0
    corrupt(db, "doomed", 21, "vector=x'00'")
    corrupt(db, "tagged", 31, "tag1=1099511627776, tag2=0")  # would fail every search returning it

    daemon.start()  # used to fail: RuntimeError: Wrong dimensionality of the vectors
    found = daemon.rts("search", appid="good", image=b64(jpeg(1)))
    assert found["err_no"] == 0 and len(found["data_items"]) == 3
    assert daemon.rts("add", appid="good", image=b64(jpeg(4)), features=[brief("4")])["err_no"] == 0
    refused = daemon.rts("search", appid="broken", image=b64(jpeg(11)))
    assert refused["err_no"] == 6 and "library 'broken' is unavailable" in refused["err_msg"], refused
    assert "/api/libraries/broken/repair" in refused["err_msg"]
    assert daemon.rts("signup", appid="broken")["err_no"] == 104
    health = daemon.get("admin", "/healthz")
    assert health["status"] == "degraded" and health["libraries"] == 1
    named = {entry["appid"]: entry["reason"] for entry in health["unavailable"]}
    assert set(named) == {"broken", "doomed", "tagged"}
    assert "tag1 is 1099511627776, not an unsigned 32-bit integer" in named["tagged"]
    bad = ContSign.of_image(jpeg(11))
    assert f"contsign {bad}: vector of 5116 bytes, expected 5120" in named["broken"], named
    log = daemon.log.read_text()
    assert (
        "ERROR" in log and "library broken is UNAVAILABLE" in log and "library doomed is UNAVAILABLE" in log
    )
    listed = {lib["appid"]: lib for lib in daemon.get("admin", "/api/libraries")["libraries"]}
    assert listed["broken"]["status"] == "unavailable" and listed["good"]["status"] == "ok"
    with urllib.request.urlopen(daemon.url("admin", "/"), timeout=30) as response:
        page = response.read().decode()
    assert "broken" in page and "unavailable: rows that cannot be loaded" in page

    # Deleting a set-aside library works like deleting any other.
    assert admin(daemon, "DELETE", "/api/libraries/doomed")["err_no"] == 1  # confirm required
    deleted = admin(daemon, "DELETE", "/api/libraries/doomed?confirm=doomed")
    assert (deleted["err_no"], deleted["items"]) == (0, 2)

    repaired = admin(daemon, "POST", "/api/libraries/broken/repair")
    assert repaired["err_no"] == 0 and repaired["restored"] is True and repaired["dropped"] == 2, repaired
    dropped = {(r["contsign"]["sign1"], r["contsign"]["sign2"]): r["reason"] for r in repaired["rows"]}
    assert set(dropped) == {(bad.sign1, bad.sign2), tuple(ContSign.of_image(jpeg(12)).to_json().values())}
    assert repaired["library"]["items"] == 2
    served = daemon.rts("search", appid="broken", image=b64(jpeg(13)))
    assert served["err_no"] == 0 and len(served["data_items"]) == 2
    assert daemon.get("admin", "/healthz")["status"] == "degraded"  # tagged is still aside
    assert admin(daemon, "POST", "/api/libraries/tagged/repair")["dropped"] == 1
    assert daemon.rts("search", appid="tagged", image=b64(jpeg(30)))["err_no"] == 0
    assert daemon.get("admin", "/healthz")["status"] == "ok"
    # A repair of a healthy library finds nothing to drop.
    assert admin(daemon, "POST", "/api/libraries/good/repair")["dropped"] == 0

    assert daemon.terminate() == 0
    daemon.start()
    health = daemon.get("admin", "/healthz")
    assert (health["status"], health["unavailable"], health["libraries"]) == ("ok", [], 3)
    assert daemon.rts("snapshot", appid="broken")["snapshot"]["index_size"] == 2
    assert daemon.rts("snapshot", appid="doomed")["err_no"] == 103
