"""Import jobs against hostile or careless sources: only regular files within the image limit are
read, ZIP entries are capped, no read can wedge the job queue or shutdown, a job yields to
interactive searches, uploads never linger, and a cancel is a cancel.

Nothing here writes GBs: big files are sparse (``truncate``), ZIP bombs are zeros compressed by
zipfile, and the image limit is lowered through the config where a test needs a big entry.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import b64
from daemon import Daemon
from images import jpeg
from test_import_export import wait_job, write_images

from same_search.app import create_app
from same_search.config import Config, LimitsConfig, ModelConfig, StorageConfig
from same_search.embed.service import EmbedService, background_priority
from same_search.imports import sources
from same_search.services import SERVICES

R = "/RTSAsService"
MIB = 1024 * 1024


def sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes on paper that takes no blocks on disk (``truncate``)."""
    path.touch()
    os.truncate(path, size)


def zeros_entry(archive: zipfile.ZipFile, name: str, size: int) -> None:
    """Stream ``size`` zero bytes into a deflated entry (64 MiB of zeros is about 64 KiB)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=size > 2**31) as member:
        block = bytes(MIB)
        for start in range(0, size, MIB):
            member.write(block[: min(MIB, size - start)])


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def uploads_of(client) -> list[Path]:
    folder = client.app[SERVICES].cfg.data_path / "uploads"
    return sorted(folder.iterdir()) if folder.is_dir() else []


async def create_job(client, appid: str, kind: str, path: Path) -> dict:
    answer = await (await client.post("/api/jobs", json={"appid": appid, "source": {kind: str(path)}})).json()
    assert answer["err_no"] == 0, answer
    return answer["job"]


async def upload_job(client, appid: str, data: bytes) -> dict:
    answer = await (await client.post(f"/api/jobs/upload?appid={appid}", data=data)).json()
    assert answer["err_no"] == 0, answer
    return answer["job"]


@pytest.fixture
async def small_limit_client(aiohttp_client, tmp_path, embedder):
    """The real app with a 1 MiB image limit, so a ZIP bomb test needs only a few MiB of zeros."""
    cfg = Config(
        storage=StorageConfig(data_dir=str(tmp_path / "data")),
        model=ModelConfig(name="efficientnet_lite0"),
        limits=LimitsConfig(max_image_bytes=MIB),
    )
    return await aiohttp_client(create_app(cfg, embedder))


# ------------------------------------------------------------------- what is read, and how much


async def test_folder_job_reads_only_regular_image_files_within_the_limit(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    photos = tmp_path / "photos"
    write_images(photos, range(1, 3))
    (photos / "sub").mkdir()
    (photos / "sub" / "UPPER.JPE").write_bytes(jpeg(3))  # every decoder suffix, any case
    sparse_file(photos / "sparse.jpg", 1536 * MIB)
    os.mkfifo(photos / "pipe.jpg")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    (photos / "linked.jpg").symlink_to(photos / "img_1.jpg")  # a file symlink is followed
    (photos / ".hidden.jpg").write_bytes(jpeg(4))
    write_images(photos, [5], sub=".cache")
    (photos / "loop").symlink_to(photos)  # a folder symlink is not descended into
    job = await create_job(client, "lib", "dir", photos)
    job = await wait_job(client, job["id"], timeout=60)
    assert (job["status"], job["total"], job["done"], job["duplicates"], job["failed"]) == (
        "done",
        5,
        3,
        1,
        1,
    )
    assert job["errors"] == [
        {"file": "sparse.jpg", "err_no": 1, "reason": job["errors"][0]["reason"]},
    ]
    assert "above the image limit of 10485760 bytes" in job["errors"][0]["reason"]


async def test_manifest_of_a_fifo_dev_zero_and_a_sparse_file_fails_those_entries_only(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    write_images(tmp_path, range(10, 12))
    os.mkfifo(tmp_path / "pipe.jpg")
    sparse_file(tmp_path / "sparse.jpg", 1536 * MIB)
    (tmp_path / "folder.jpg").mkdir()
    lines = ["pipe.jpg", "/dev/zero", "sparse.jpg", "folder.jpg", "missing.jpg", "img_10.jpg", "img_11.jpg"]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": p}) + "\n" for p in lines))
    job = await wait_job(client, (await create_job(client, "lib", "manifest", manifest))["id"], timeout=60)
    assert (job["status"], job["done"], job["failed"]) == ("done", 2, 5)
    reasons = {e["file"]: e["reason"] for e in job["errors"]}
    assert "a FIFO" in reasons["pipe.jpg"] and "a character device" in reasons["/dev/zero"]
    assert "above the image limit" in reasons["sparse.jpg"] and "a folder" in reasons["folder.jpg"]
    assert "No such file" in reasons["missing.jpg"]
    assert {e["err_no"] for e in job["errors"]} == {1}


async def test_manifest_that_is_not_a_regular_file_is_refused(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    os.mkfifo(tmp_path / "list.csv")
    for path in (tmp_path / "list.csv", Path("/dev/zero")):
        answer = await (
            await client.post("/api/jobs", json={"appid": "lib", "source": {"manifest": str(path)}})
        ).json()
        assert answer["err_no"] == 1 and "not a regular file" in answer["err_msg"], answer


async def test_zip_entries_are_capped_by_declared_and_real_size(small_limit_client, tmp_path):
    client = small_limit_client
    signup = await client.post(f"{R}/signup", json={"appid": "lib", "from": "pytest"})
    assert (await signup.json())["err_no"] == 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        zeros_entry(archive, "bomb.jpg", 64 * MIB)  # declares 64 MiB
        zeros_entry(archive, "liar.jpg", 2 * MIB)  # will declare 1,000 bytes
        archive.writestr("ok/1.jpg", jpeg(20))
        archive.writestr("ok/2.jpg", jpeg(21))
    data = bytearray(buffer.getvalue())
    assert len(data) < MIB  # a 64 MiB entry in well under 1 MiB: the shape of a ZIP bomb
    # Rewrite liar.jpg's uncompressed size in its central directory record (what zipfile trusts).
    record = data.index(b"PK\x01\x02")
    while data[record + 46 : record + 46 + 8] != b"liar.jpg":
        record = data.index(b"PK\x01\x02", record + 4)
    struct.pack_into("<I", data, record + 24, 1000)
    job = await wait_job(client, (await upload_job(client, "lib", bytes(data)))["id"], timeout=60)
    assert (job["status"], job["done"], job["failed"]) == ("done", 2, 2)
    reasons = {e["file"]: e["reason"] for e in job["errors"]}
    assert "67108864 bytes, above the image limit of 1048576" in reasons["bomb.jpg"]
    assert "uncompressed size in the ZIP" in reasons["bomb.jpg"]
    assert "cannot read from the ZIP" in reasons["liar.jpg"]  # zipfile stops at 1,000: bad CRC
    assert uploads_of(client) == []


async def test_zip_job_opens_the_archive_once_not_per_entry(client, api, monkeypatch):
    """Reading an entry must not re-parse the central directory (O(n) per entry, O(n^2) per job):
    the archive is opened when the job is created and once when it runs, whatever its size."""
    opened: list[str] = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(str(file))
            super().__init__(file, *args, **kwargs)

    await api(f"{R}/signup", appid="lib")
    entries = {f"notes/{i:05d}.txt": b"x" for i in range(20_000)}  # the red team's 20,000 entries
    entries |= {f"images/{seed}.jpg": jpeg(seed) for seed in range(40, 80)}  # two chunks
    data = zip_of(entries)
    monkeypatch.setattr(sources.zipfile, "ZipFile", CountingZipFile)
    job = await wait_job(client, (await upload_job(client, "lib", data))["id"], timeout=120)
    assert (job["status"], job["total"], job["done"]) == ("done", 40, 40)
    assert len(opened) == 2, opened


async def test_zip_with_more_entries_than_allowed_is_refused_before_parsing(client, api, monkeypatch):
    monkeypatch.setattr(sources, "MAX_ENTRIES", 100)
    await api(f"{R}/signup", appid="lib")
    data = zip_of({f"{i}.jpg": b"x" for i in range(101)}, zipfile.ZIP_STORED)
    answer = await (await client.post("/api/jobs/upload?appid=lib", data=data)).json()
    assert answer["err_no"] == 1 and "101 entries, more than 100" in answer["err_msg"]
    assert uploads_of(client) == []


# ------------------------------------------------------------------------ yielding to searches


async def test_interactive_embeds_overtake_a_queued_import(embedder):
    """A search's image is embedded before a backlog of import images queued ahead of it."""
    service = EmbedService(embedder, ModelConfig(name="efficientnet_lite0"), LimitsConfig())
    service.start()
    finished: list[str] = []

    async def embed(name: str, seed: int, background: bool) -> None:
        if background:
            background_priority()  # this task only: each coroutine below runs as its own task
        await service.embed_image(jpeg(seed, (96, 96)))
        finished.append(name)

    try:
        jobs = [asyncio.create_task(embed(f"import {i}", i, True)) for i in range(24)]
        await asyncio.sleep(0)  # the import's 24 images are admitted first
        search = asyncio.create_task(embed("search", 99, False))
        await asyncio.gather(search, *jobs)
    finally:
        await service.close()
    assert finished.index("search") < 12, finished  # first come, first served would make it last


async def test_a_search_is_answered_while_a_big_import_runs(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    await api(f"{R}/add", appid="lib", image=b64(jpeg(7)))
    write_images(tmp_path / "big", range(1000, 1096))
    job = await create_job(client, "lib", "dir", tmp_path / "big")
    while (await (await client.get(f"/api/jobs/{job['id']}")).json())["job"]["status"] != "running":
        await asyncio.sleep(0.05)
    answers = [await api(f"{R}/search", appid="lib", image=b64(jpeg(7)), rn=1) for _ in range(3)]
    state = (await (await client.get(f"/api/jobs/{job['id']}")).json())["job"]
    assert all(a["err_no"] == 0 for a in answers)
    assert state["status"] == "running" and state["position"] < state["total"]
    await client.post(f"/api/jobs/{job['id']}/cancel")
    assert (await wait_job(client, job["id"]))["status"] == "cancelled"


# ----------------------------------------------------------------------------- cancel, uploads


async def test_cancel_during_the_last_chunk_ends_cancelled(client, api, tmp_path):
    """The job's only chunk is held at the library's write lock while the cancel arrives."""
    await api(f"{R}/signup", appid="lib")
    services = client.app[SERVICES]
    lock = services.libraries.backend.write_lock(await services.libraries.get("lib"))  # local backend
    await lock.acquire()
    try:
        data = zip_of({f"{seed}.jpg": jpeg(seed) for seed in range(60, 63)})
        job = await upload_job(client, "lib", data)
        assert len(uploads_of(client)) == 1
        while services.embed.images < 1:  # an image is embedded: its add now waits for the lock
            await asyncio.sleep(0.02)
        cancelled = await (await client.post(f"/api/jobs/{job['id']}/cancel")).json()
        left = uploads_of(client)
    finally:
        lock.release()
    final = await wait_job(client, job["id"])
    assert (final["status"], final["position"], final["total"], final["done"]) == ("cancelled", 3, 3, 3)
    assert cancelled["err_no"] == 0 and cancelled["job"]["status"] == "running"
    assert left == []  # deleted at the cancel; the open archive reads on


async def test_cancelling_a_queued_upload_deletes_it(client, api):
    await api(f"{R}/signup", appid="lib")
    libraries = client.app[SERVICES].libraries
    lock = libraries.backend.write_lock(await libraries.get("lib"))  # local backend
    await lock.acquire()  # the first job cannot finish, the second stays queued
    try:
        first = await upload_job(client, "lib", zip_of({"a.jpg": jpeg(70)}))
        second = await upload_job(client, "lib", zip_of({"b.jpg": jpeg(71)}))
        assert len(uploads_of(client)) == 2
        answer = await (await client.post(f"/api/jobs/{second['id']}/cancel")).json()
        assert answer["job"]["status"] == "cancelled" and len(uploads_of(client)) == 1
    finally:
        lock.release()
    assert (await wait_job(client, first["id"]))["status"] == "done"
    assert (await wait_job(client, second["id"]))["status"] == "cancelled"
    assert uploads_of(client) == []


async def test_an_upload_cut_off_mid_body_leaves_nothing(client, api):
    await api(f"{R}/signup", appid="lib")
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /api/jobs/upload?appid=lib HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/zip\r\nContent-Length: 50000000\r\n\r\n" + bytes(3 * MIB)
    )
    await writer.drain()
    deadline = time.monotonic() + 10
    while not uploads_of(client):  # the partial upload is being written
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    writer.close()
    while uploads_of(client):
        assert time.monotonic() < deadline, uploads_of(client)
        await asyncio.sleep(0.05)
    listed = (await (await client.get("/api/jobs")).json())["jobs"]
    assert listed == []


# ------------------------------------------------------------------------ the real daemon


def _request(daemon: Daemon, path: str, data: bytes) -> dict:
    request = urllib.request.Request(
        daemon.url("admin", path), data=data, headers={"Content-Type": "application/zip"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait(daemon: Daemon, job_id: int, until, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while not until(job := daemon.get("admin", f"/api/jobs/{job_id}")["job"]):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.mark.heavy
def test_fifo_manifest_neither_wedges_the_queue_nor_holds_sigterm_and_orphans_go(tmp_path):
    """The red team's FIFO manifest wedged the job queue and kept the process alive after SIGTERM.
    Now its entries fail and the jobs go on; SIGTERM during an import stops the daemon within
    the grace period; at the next start stray files in data/uploads are deleted, a paused job's
    ZIP is kept and the job finishes."""
    photos = tmp_path / "photos"
    write_images(photos, range(300, 304))
    os.mkfifo(photos / "pipe.jpg")
    manifest = photos / "list.csv"
    manifest.write_text("path\npipe.jpg\n/dev/zero\n" + "".join(f"img_{s}.jpg\n" for s in range(300, 304)))
    daemon = Daemon(tmp_path, '[model]\nname = "efficientnet_lite0"\n[server]\nshutdown_grace_s = 3.0\n')
    daemon.start()
    try:
        daemon.rts("signup", appid="lib")
        listed = daemon.post("admin", "/api/jobs", {"appid": "lib", "source": {"manifest": str(manifest)}})
        archive = zip_of({f"z/{seed}.jpg": jpeg(seed) for seed in range(400, 496)})
        zipped = _request(daemon, "/api/jobs/upload?appid=lib", archive)["job"]
        first = _wait(daemon, listed["job"]["id"], lambda j: j["status"] == "done")
        assert (first["done"], first["failed"]) == (4, 2)
        _wait(daemon, zipped["id"], lambda j: j["position"] >= 32)
        sent = time.monotonic()
        assert daemon.terminate(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - sent < 3.0 + 10  # the grace period, plus saving and closing
        uploads = daemon.data_dir / "uploads"
        kept = sorted(uploads.iterdir())
        assert len(kept) == 1  # the paused job's ZIP
        (uploads / "1700000000000-deadbeef.zip").write_bytes(b"an upload whose job is gone")
        (uploads / "1700000000001-cafebabe.import.zip").write_bytes(b"half an import")
        daemon.start()
        assert sorted(uploads.iterdir()) in (kept, [])  # [] if the job already finished
        assert "removed 2 orphaned file(s)" in daemon.log.read_text()
        last = _wait(daemon, zipped["id"], lambda j: j["status"] != "running")
        assert (last["status"], last["done"] + last["duplicates"]) == ("done", 96)
        assert not any(uploads.iterdir())
    finally:
        daemon.stop()


def test_unix_socket_in_a_folder_is_skipped(tmp_path):
    """A socket (like a FIFO or a device) is not a regular file: a folder listing skips it."""
    write_images(tmp_path, [1])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.jpg"))
        assert [e.name for e in sources.FolderSource(tmp_path, MIB).entries] == ["img_1.jpg"]
