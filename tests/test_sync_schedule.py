"""Scheduled folder sync and item edits on the management port, through the real app on a real
data dir (real SQLite, real index, the session's embedder): a schedule is stored and shown, runs
when due, never queues a second sync of its library, catches up once after a restart, and refuses
bad input with err_no 1 naming the field."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import b64, brief
from images import jpeg

from same_search.app import create_app
from same_search.imports.schedule import every_text, next_due, parse_every
from same_search.services import SERVICES

R = "/RTSAsService"
HOUR = 3600


async def envelope(response) -> dict:
    assert response.status == 200, await response.text()
    return await response.json()


async def put(client, path: str, body: dict) -> dict:
    return await envelope(await client.put(path, json=body))


async def wait_for(client, appid: str, check, timeout: float = 60) -> dict:
    """The library's schedule once ``check(schedule)`` holds (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        schedule = (await envelope(await client.get(f"/api/libraries/{appid}/sync")))["schedule"]
        if check(schedule):
            return schedule
        assert time.monotonic() < deadline, schedule
        await asyncio.sleep(0.05)


def ended(schedule: dict) -> bool:
    job = schedule["last_job"]
    return job is not None and job["status"] not in ("queued", "running")


async def briefs(client, appid: str) -> set[str]:
    page = await envelope(await client.get(f"/api/libraries/{appid}/items?limit=1000"))
    return {item["brief_text"] for item in page["items"]}


def folder_of(tmp_path: Path, seeds) -> Path:
    folder = tmp_path / "followed"
    folder.mkdir(exist_ok=True)
    for seed in seeds:
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    return folder


def test_intervals_and_beats():
    assert [parse_every(v) for v in ("90s", "15m", "6h", "1d", 120, " 2H ")] == [
        90,
        900,
        21600,
        86400,
        120,
        7200,
    ]
    assert [every_text(s) for s in (90, 900, 21600, 86400, 3660)] == ["90s", "15m", "6h", "1d", "61m"]
    assert next_due(1000.0, 1000.5, HOUR) == 1000.0 + HOUR  # on time: one beat later
    assert next_due(1000.0, 1000.0 + 5.5 * HOUR, HOUR) == 1000.0 + 6 * HOUR  # down 5 beats: one run
    assert next_due(1000.0, 500.0, HOUR) == 1000.0 + HOUR


async def test_a_schedule_is_stored_shown_runs_when_due_and_on_demand(client, api, tmp_path):
    await api(f"{R}/signup", appid="follow")
    folder = folder_of(tmp_path, (1, 2))
    before = time.time()
    answer = await put(client, "/api/libraries/follow/sync", {"folder": str(folder), "every": "1h"})
    assert answer["err_no"] == 0, answer
    schedule = answer["schedule"]
    assert (schedule["folder"], schedule["every"], schedule["interval_s"]) == (str(folder), "1h", HOUR)
    assert schedule["remove_missing"] is False and schedule["next_run"] <= time.time()  # due at once

    schedule = await wait_for(client, "follow", ended)  # the scheduler ran it
    job = schedule["last_job"]
    assert (job["kind"], job["status"], job["done"], job["source"]) == ("sync", "done", 2, str(folder))
    assert before <= schedule["last_run"] <= time.time()
    assert schedule["next_run"] == pytest.approx(schedule["last_run"] + HOUR, abs=5)
    assert schedule["last_message"] is None and schedule["running"] is False
    assert await briefs(client, "follow") == {"1.jpg", "2.jpg"}
    listed = (await envelope(await client.get("/api/sync")))["schedules"]
    assert [s["appid"] for s in listed] == ["follow"]

    (folder / "3.jpg").write_bytes(jpeg(3))  # a new file, synced by "sync now"
    run = await envelope(await client.post("/api/libraries/follow/sync/run"))
    assert run["started"] is True and run["job"]["kind"] == "sync"
    schedule = await wait_for(
        client, "follow", lambda s: ended(s) and s["last_job"]["id"] == run["job"]["id"]
    )
    assert schedule["last_job"]["done"] == 1 and schedule["last_job"]["duplicates"] == 2
    assert await briefs(client, "follow") == {"1.jpg", "2.jpg", "3.jpg"}

    # A due run while the library's sync job is still queued starts none: skipped, said so.
    services = client.server.app[SERVICES]
    waiting = await services.libraries.jobs.create_job("follow", "sync", str(folder), 3)  # runner not woken
    due = await put(
        client, "/api/libraries/follow/sync", {"folder": str(folder), "every": "1h", "start_at": time.time()}
    )
    assert due["err_no"] == 0
    schedule = await wait_for(client, "follow", lambda s: s["last_message"] is not None)
    assert f"skipped: sync job {waiting} was still queued" in schedule["last_message"]
    assert schedule["next_run"] > time.time() + HOUR - 60
    again = await envelope(await client.post("/api/libraries/follow/sync/run"))
    assert (again["started"], again["job"]["id"]) == (False, waiting)  # sync now answers it, no second

    removed = await envelope(await client.delete("/api/libraries/follow/sync"))
    assert removed["removed"] == 1
    assert (await envelope(await client.get("/api/libraries/follow/sync")))["schedule"] is None
    assert (await envelope(await client.delete("/api/libraries/follow/sync")))["removed"] == 0


async def test_a_schedule_survives_a_restart_and_catches_up_once(
    aiohttp_client, client, api, config, embedder, tmp_path
):
    await api(f"{R}/signup", appid="nightly")
    folder = folder_of(tmp_path, (11,))
    await put(
        client, "/api/libraries/nightly/sync", {"folder": str(folder), "every": "1d", "remove_missing": True}
    )
    first = await wait_for(client, "nightly", ended)
    await client.close()

    # Its run was due 2.5 days ago (missed three times over): a file came meanwhile, one went.
    (folder / "12.jpg").write_bytes(jpeg(12))
    (folder / "11.jpg").unlink()
    missed = first["next_run"] - 3.5 * 86400
    with sqlite3.connect(config.data_path / "same_search.sqlite3") as db:
        db.execute("UPDATE sync_schedules SET next_run_at=? WHERE appid='nightly'", (missed,))

    reopened = await aiohttp_client(create_app(config, embedder))
    schedule = await wait_for(
        reopened, "nightly", lambda s: ended(s) and s["last_job"]["id"] != first["last_job"]["id"]
    )
    assert (schedule["folder"], schedule["every"], schedule["remove_missing"]) == (str(folder), "1d", True)
    job = schedule["last_job"]
    assert (job["done"], job["removed"]) == (1, 1)
    assert await briefs(reopened, "nightly") == {"12.jpg"}
    assert time.time() < schedule["next_run"] <= time.time() + 86400  # on its beat, once
    assert schedule["next_run"] == pytest.approx(missed + 3 * 86400, abs=1)  # the first beat after now
    jobs = (await envelope(await reopened.get("/api/jobs")))["jobs"]
    assert [j["kind"] for j in jobs] == ["sync", "sync"]  # the first run and one catch-up, not four

    # Deleting the library forgets its schedule: a library of the same name starts afresh.
    deleted = await envelope(await reopened.delete("/api/libraries/nightly?confirm=nightly"))
    assert deleted["err_no"] == 0
    assert (await envelope(await reopened.get("/api/sync")))["schedules"] == []


BAD_SCHEDULES = [
    ({"folder": "relative/dir", "every": "1h"}, "absolute path"),
    ({"every": "1h"}, "absolute path"),
    ({"folder": "/no/such/folder/here", "every": "1h"}, "is not a folder"),
    ({"folder": "FILE", "every": "1h"}, "is not a folder"),
    ({"folder": "DIR"}, "every is required"),
    ({"folder": "DIR", "every": "10s"}, "from 1m to 366d"),
    ({"folder": "DIR", "every": "soon"}, "every must be seconds"),
    ({"folder": "DIR", "every": True}, "every must be seconds"),
    ({"folder": "DIR", "every": "1h", "remove_missing": "yes"}, "remove_missing must be true or false"),
    ({"folder": "DIR", "every": "1h", "start_at": "tomorrow"}, "start_at must be"),
    ({"folder": "DIR", "every": "1h", "interval": 5}, "unknown field(s) interval"),
]


async def test_bad_schedules_are_refused_naming_the_field(client, api, tmp_path):
    await api(f"{R}/signup", appid="strict")
    folder = folder_of(tmp_path, (1,))
    (tmp_path / "file.jpg").write_bytes(jpeg(1))
    for body, text in BAD_SCHEDULES:
        if body.get("folder") in ("DIR", "FILE"):
            body = {**body, "folder": str(folder if body["folder"] == "DIR" else tmp_path / "file.jpg")}
        answer = await put(client, "/api/libraries/strict/sync", body)
        assert answer["err_no"] == 1 and text in answer["err_msg"], (body, answer)
    assert (await envelope(await client.get("/api/libraries/strict/sync")))["schedule"] is None


async def test_schedule_errors_for_libraries_and_content_types(client, api, tmp_path):
    folder = folder_of(tmp_path, (1,))
    missing = await put(client, "/api/libraries/nobody/sync", {"folder": str(folder), "every": "1h"})
    assert missing["err_no"] == 103
    await api(f"{R}/signup", appid="plain")
    run = await envelope(await client.post("/api/libraries/plain/sync/run"))
    assert run["err_no"] == 1 and "follows no folder" in run["err_msg"]
    form = await envelope(await client.put("/api/libraries/plain/sync", data=b"folder=/x"))
    assert form["err_no"] == 1 and "Content-Type" in form["err_msg"]


async def test_edit_an_items_brief_and_tags(client, api):
    await api(f"{R}/signup", appid="edits")
    added = await api(f"{R}/add", appid="edits", image=b64(jpeg(5)), features=[brief("old name")])
    sign = added["contsign"]
    key = f"{sign['sign1']},{sign['sign2']}"
    path = f"/api/libraries/edits/items/{key}"
    answer = await envelope(await client.patch(path, json={"brief_text": "new name", "tags": [7, 8]}))
    assert answer["err_no"] == 0, answer
    assert (answer["item"]["brief_text"], answer["item"]["tags"]) == ("new name", [7, 8])
    tags_only = await envelope(await client.patch(path, json={"tags": [1, 2]}))
    assert (tags_only["item"]["brief_text"], tags_only["item"]["tags"]) == ("new name", [1, 2])
    searched = await api(f"{R}/search", appid="edits", image=b64(jpeg(5)), rn=1)
    hit = searched["data_items"][0]["features"]
    assert {"fea_id": 1000, "fea_data": b64(b"new name")} in hit  # the spec's search sees it

    for body, text in (
        ({}, "brief_text"),
        ({"brief_text": 5}, "brief_text must be a string"),
        ({"brief_text": "x", "brief": "eA=="}, "not both"),
        ({"tags": [1]}, "two integers"),
        ({"tags": [-1, 2]}, "two integers"),
        ({"brief_text": "x" * 5000}, "at most 4096"),
        ({"title": "x"}, "brief_text"),
    ):
        refused = await envelope(await client.patch(path, json=body))
        assert refused["err_no"] == 1 and text in refused["err_msg"], (body, refused)
    absent = await envelope(await client.patch("/api/libraries/edits/items/1,2", json={"brief_text": "x"}))
    assert absent["err_no"] == 102
