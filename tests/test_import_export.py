"""Bulk import jobs (folder, manifest, ZIP), export/import, and the console's search endpoint."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.config import ModelConfig
from same_search.contsign import ContSign
from same_search.embed.embedder import pick_device, plan_execution

R = "/RTSAsService"
#: Jobs, export and import hold on every backend (see conftest.pytest_generate_tests).
BACKENDS = ("local", "milvus")


def write_images(folder: Path, seeds, sub: str = "") -> None:
    target = folder / sub
    target.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (target / f"img_{seed}.jpg").write_bytes(jpeg(seed))


async def wait_job(client, job_id: int, timeout: float = 120) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        job = (await (await client.get(f"/api/jobs/{job_id}")).json())["job"]
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.2)
    raise TimeoutError(job)


async def test_folder_job_counts_errors_and_duplicates(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    await api(f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[brief("already there")])
    write_images(tmp_path / "photos", range(1, 6))
    write_images(tmp_path / "photos", range(6, 9), sub="more")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "photos" / "notes.txt").write_text("ignored: not an image")
    created = await (
        await client.post("/api/jobs", json={"appid": "lib", "source": {"dir": str(tmp_path / "photos")}})
    ).json()
    assert created["err_no"] == 0 and created["job"]["total"] == 9
    job = await wait_job(client, created["job"]["id"])
    assert (job["status"], job["done"], job["duplicates"], job["failed"]) == ("done", 7, 1, 1)
    assert job["errors"] == [{"file": "broken.jpg", "err_no": 100, "reason": job["errors"][0]["reason"]}]
    assert job["errors"][0]["reason"].startswith("216201")
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 8
    key = ContSign.of_image(jpeg(7))
    item = (await (await client.get(f"/api/libraries/lib/items/{key.sign1},{key.sign2}")).json())["item"]
    assert item["brief_text"] == "more/img_7.jpg"
    listed = (await (await client.get("/api/jobs")).json())["jobs"]
    assert [j["id"] for j in listed] == [created["job"]["id"]]


async def test_manifest_and_zip_jobs(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    write_images(tmp_path, range(20, 23))
    (tmp_path / "list.csv").write_text('path,brief,tags\nimg_20.jpg,first,"5,6"\nimg_21.jpg,,\n')
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"path": "img_22.jpg", "brief": "third", "tags": [7, 0]}) + "\n"
    )
    for name in ("list.csv", "list.jsonl"):
        created = await (
            await client.post(
                "/api/jobs", json={"appid": "lib", "source": {"manifest": str(tmp_path / name)}}
            )
        ).json()
        assert (await wait_job(client, created["job"]["id"]))["status"] == "done"
    tagged = await api(
        f"{R}/search",
        appid="lib",
        image=b64(jpeg(20)),
        features=[{"fea_id": 999, "fea_data": b64(bytes([5, 0, 0, 0, 0, 0, 0, 0]))}],
    )
    assert [i["features"][0]["fea_data"] for i in tagged["data_items"]] == [b64(b"first")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for seed in (30, 31):
            archive.writestr(f"zipped/{seed}.jpg", jpeg(seed))
    created = await (await client.post("/api/jobs/upload?appid=lib", data=buffer.getvalue())).json()
    job = await wait_job(client, created["job"]["id"])
    assert (job["status"], job["done"]) == ("done", 2)
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 5


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"appid": "lib", "source": {"dir": "relative/path"}}, "absolute"),
        ({"appid": "lib", "source": {"dir": "/no/such/folder"}}, "not a folder"),
        ({"appid": "lib", "source": {"ftp": "/x"}}, "source must be"),
        ({"appid": "nobody", "source": {"dir": "/tmp"}}, "signed up"),
    ],
)
async def test_job_errors(client, api, body, text):
    await api(f"{R}/signup", appid="lib")
    answer = await (await client.post("/api/jobs", json=body)).json()
    assert answer["err_no"] in (1, 103) and text in answer["err_msg"], answer


async def test_export_then_import_elsewhere_without_embedding(client, api):
    await api(f"{R}/signup", appid="lib")
    for seed in range(3):
        tags = [{"fea_id": 999, "fea_data": b64(bytes([seed, 0, 0, 0, 9, 0, 0, 0]))}]
        await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"b{seed}"), *tags])
    plain = await client.get("/api/libraries/lib/export")
    assert plain.status == 200 and plain.content_type == "application/zip"
    refused = await (await client.post("/api/libraries/copy/import", data=await plain.read())).json()
    assert refused["err_no"] == 1 and "vectors" in refused["err_msg"]
    export = await (await client.get("/api/libraries/lib/export?vectors=1")).read()
    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert answer["err_no"] == 0 and (answer["imported"], answer["duplicates"]) == (3, 0)
    again = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert (again["imported"], again["duplicates"]) == (0, 3)
    original = await api(f"{R}/search", appid="lib", image=b64(jpeg(1)))
    copied = await api(f"{R}/search", appid="copy", image=b64(jpeg(1)))
    assert [(i["contsign"], i["features"]) for i in copied["data_items"]] == [
        (i["contsign"], i["features"]) for i in original["data_items"]
    ]
    assert copied["data_items"][0]["score"] == pytest.approx(original["data_items"][0]["score"], abs=1e-5)


async def test_console_search_endpoint(client, api):
    await api(f"{R}/signup", appid="lib")
    for seed in range(4):
        await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"photo {seed}")])
    answer = await (await client.post("/api/libraries/lib/search?rn=2", data=jpeg(2))).json()
    assert answer["err_no"] == 0 and answer["has_more"] == 1
    first = answer["results"][0]
    assert (
        first["brief_text"] == "photo 2"
        and first["score"] > 0.999
        and first["thumbnail"].endswith("/thumbnail")
    )


async def test_cancel_a_running_job(client, api, tmp_path):
    await api(f"{R}/signup", appid="lib")
    write_images(tmp_path / "big", range(300, 400))
    created = await (
        await client.post("/api/jobs", json={"appid": "lib", "source": {"dir": str(tmp_path / "big")}})
    ).json()
    job_id = created["job"]["id"]
    cancelled = await (await client.post(f"/api/jobs/{job_id}/cancel")).json()
    assert cancelled["err_no"] == 0
    job = await wait_job(client, job_id)
    assert job["status"] == "cancelled" and job["position"] < 100
    stored = (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"]
    assert stored == job["done"] < 100
    assert (await (await client.get("/api/jobs/999")).json())["err_no"] == 1
    assert (await (await client.post("/api/jobs/x/cancel")).json())["err_no"] == 1


@pytest.mark.heavy
def test_job_of_many_images_resumes_after_kill_9(tmp_path):
    folder = tmp_path / "many"
    write_images(folder, range(1000, 1128))  # four chunks: the kill lands after the first
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        daemon.rts("signup", appid="lib")
        job = daemon.post("admin", "/api/jobs", {"appid": "lib", "source": {"dir": str(folder)}})["job"]
        deadline = time.monotonic() + 120
        while daemon.get("admin", f"/api/jobs/{job['id']}")["job"]["position"] < 32:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        daemon.kill()
        daemon.start()
        while (state := daemon.get("admin", f"/api/jobs/{job['id']}")["job"])["status"] == "running":
            assert time.monotonic() < deadline + 120
            time.sleep(0.3)
        assert state["status"] == "done" and state["failed"] == 0
        # At most one chunk is redone: 32 images, or two rounds of the plan's forward passes.
        plan = plan_execution(ModelConfig(), pick_device("auto"))
        chunk = max(32, 4 * plan.max_batch * plan.workers)
        assert state["done"] + state["duplicates"] == 128 and state["duplicates"] <= chunk
        assert daemon.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 128
        resumed = [line for line in daemon.log.read_text().splitlines() if "running from" in line]
        assert resumed[0].endswith("running from 0/128") and not resumed[-1].endswith("from 0/128")
    finally:
        daemon.stop()


async def test_a_job_stores_each_chunk_as_one_batch_with_thumbnails_and_local_features(client, api, tmp_path):
    """Without a near-duplicate policy a job's chunk is embedded, then stored in one transaction
    (every item of the chunk has the same creation time) and indexed in one graph insert; the
    thumbnails and local features travel with it; a picture twice in the folder is stored once."""
    await api(f"{R}/signup", appid="lib")
    write_images(tmp_path / "photos", range(20, 30))
    (tmp_path / "photos" / "again.jpg").write_bytes(jpeg(21))
    created = await (
        await client.post("/api/jobs", json={"appid": "lib", "source": {"dir": str(tmp_path / "photos")}})
    ).json()
    job = await wait_job(client, created["job"]["id"])
    assert (job["status"], job["done"], job["duplicates"], job["failed"]) == ("done", 10, 1, 0)
    items = (await (await client.get("/api/libraries/lib/items?limit=100")).json())["items"]
    assert len(items) == 10 and len({item["created"] for item in items}) == 1
    thumbnail = await client.get(items[0]["thumbnail"])
    assert thumbnail.status == 200 and thumbnail.content_type == "image/jpeg"
    for seed in range(20, 30):
        hits = (await api(f"{R}/search", appid="lib", image=b64(jpeg(seed)), same_picture=1))["data_items"]
        assert hits and hits[0]["contsign"] == ContSign.of_image(jpeg(seed)).to_json()
