"""The duplicates view (extension): near-duplicate groups of a library, and removing the extras."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from conftest import b64, brief
from images import encode, jpeg, picture
from test_reranked_library import gradient

from same_search.app import create_app
from same_search.config import Config, IndexConfig, ModelConfig, StorageConfig
from same_search.contsign import ContSign
from same_search.duplicates import NEIGHBOURS
from same_search.services import SERVICES

R = "/RTSAsService"


def copy_of(seed: int, quality: int = 50) -> bytes:
    return encode(picture(seed), quality=quality)


#: brief -> picture bytes, in the order they are added.
PICTURES = {
    "p1": jpeg(1),
    "p1 copy": copy_of(1),
    "p2": jpeg(2),
    "p1 smaller": encode(picture(1).resize((240, 180))),
    "p3": jpeg(3),
    "p2 copy": copy_of(2, 45),
    "p4": jpeg(4),
    "p6": jpeg(6),
}


def key(name: str) -> str:
    c = ContSign.of_image(PICTURES[name])
    return f"{c.sign1},{c.sign2}"


async def fill(call) -> None:
    assert (await call(f"{R}/signup", appid="lib"))["err_no"] == 0
    for name, image in PICTURES.items():
        answer = await call(f"{R}/add", appid="lib", image=b64(image), features=[brief(name)])
        assert answer["err_no"] == 0, answer


async def scan_to_end(client, body: dict | None = None) -> dict:
    started = await (await client.post("/api/libraries/lib/duplicates", json=body or {})).json()
    assert started["err_no"] == 0, started
    scan = started["scan"]
    for _ in range(300):
        if scan["status"] != "running":
            return scan
        await asyncio.sleep(0.1)
        scan = (await (await client.get(f"/api/libraries/lib/duplicates/{scan['id']}")).json())["scan"]
    raise TimeoutError(scan)


def shape(scan: dict) -> list[tuple[str, list[str]]]:
    return [(g["keep"]["brief_text"], [e["brief_text"] for e in g["extras"]]) for g in scan["groups"]]


EXPECTED = [("p1", ["p1 copy", "p1 smaller"]), ("p2", ["p2 copy"])]


@contextlib.asynccontextmanager
async def index_thread_held(client) -> AsyncIterator[None]:
    """Hold the library's index thread (local backend) so a scan cannot finish meanwhile."""
    lib = await client.app[SERVICES].libraries.get("lib")
    gate = threading.Event()
    blocked = asyncio.get_running_loop().run_in_executor(lib.handle._executor, gate.wait)
    try:
        yield
    finally:
        gate.set()
        await blocked


async def test_small_library_is_scanned_exactly_in_one_answer(client, api):
    await fill(api)
    started = await (await client.post("/api/libraries/lib/duplicates", json={"min_score": 0.95})).json()
    scan = started["scan"]
    assert scan["status"] == "done" and scan["method"] == "exact" and scan["progress"] == 1.0
    assert sorted((k, sorted(v)) for k, v in shape(scan)) == EXPECTED
    assert scan["groups_total"] == 2 and scan["extras_total"] == 3 and scan["total"] == len(PICTURES)
    for group in scan["groups"]:
        assert group["keep"]["score"] == 1.0
        scores = [e["score"] for e in group["extras"]]
        assert all(s >= 0.95 for s in scores) and scores == sorted(scores, reverse=True)
        assert group["keep"]["thumbnail"].endswith(f"/items/{group['keep']['key']}/thumbnail")


async def test_remove_the_extras_in_one_action(client, api):
    await fill(api)
    scan = await scan_to_end(client)  # min_score: the library's floor, 0.95
    answer = await (await client.post(f"/api/libraries/lib/duplicates/{scan['id']}/remove")).json()
    assert answer["err_no"] == 0 and answer["removed"] == 3
    assert answer["scan"]["groups"] == [] and answer["scan"]["extras_total"] == 0
    left = (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"]
    assert left == len(PICTURES) - 3
    again = await scan_to_end(client)
    assert again["groups"] == []


async def test_remove_some_extras_but_never_a_kept_item(client, api):
    await fill(api)
    scan = await scan_to_end(client)
    path = f"/api/libraries/lib/duplicates/{scan['id']}/remove"
    kept = ContSign.of_image(PICTURES["p1"]).to_json()
    refused = await (await client.post(path, json={"contsigns": [kept]})).json()
    assert refused["err_no"] == 1 and "not extras" in refused["err_msg"]
    one = ContSign.of_image(PICTURES["p2 copy"]).to_json()
    answer = await (await client.post(path, json={"contsigns": [one]})).json()
    assert answer["removed"] == 1
    assert [(k, sorted(v)) for k, v in shape(answer["scan"])] == [("p1", ["p1 copy", "p1 smaller"])]
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == len(PICTURES) - 1


async def test_a_lower_floor_does_not_let_look_alikes_join(client, api):
    await fill(api)
    loose = await scan_to_end(client, {"min_score": 0.5})
    # Other pictures score above 0.5, but the same-picture check (local features) keeps them out.
    assert sorted((k, sorted(v)) for k, v in shape(loose)) == EXPECTED


async def test_a_large_library_is_scanned_through_the_index_in_the_background(
    aiohttp_client, embedder, tmp_path
):
    cfg = Config(
        storage=StorageConfig(data_dir=str(tmp_path / "d")),
        model=ModelConfig(name="efficientnet_lite0"),
        index=IndexConfig(exact_threshold=3),  # above 3 items: through the index
    )
    client = await aiohttp_client(create_app(cfg, embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "t", **body})).json()

    await fill(call)
    scan = await scan_to_end(client, {"min_score": 0.95})
    assert scan["method"] == "index" and scan["done"] == scan["total"] == len(PICTURES)
    assert sorted((k, sorted(v)) for k, v in shape(scan)) == EXPECTED


async def test_a_running_scan_can_be_cancelled(aiohttp_client, embedder, tmp_path):
    cfg = Config(
        storage=StorageConfig(data_dir=str(tmp_path / "d")),
        model=ModelConfig(name="efficientnet_lite0"),
        index=IndexConfig(exact_threshold=3),
    )
    client = await aiohttp_client(create_app(cfg, embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "t", **body})).json()

    await fill(call)
    async with index_thread_held(client):  # so the scan cannot finish before it is cancelled
        started = (await (await client.post("/api/libraries/lib/duplicates", json={})).json())["scan"]
        assert started["status"] == "running"
        answer = await (await client.post(f"/api/libraries/lib/duplicates/{started['id']}/cancel")).json()
    assert answer["err_no"] == 0 and answer["scan"]["status"] == "cancelled"
    assert answer["scan"]["groups"] == []
    removal = await (await client.post(f"/api/libraries/lib/duplicates/{started['id']}/remove")).json()
    assert removal["err_no"] == 1 and "cancelled" in removal["err_msg"]


async def test_errors(client, api):
    await fill(api)
    for body, field in (({"min_score": 2}, "min_score"), ({"min_score": "x"}, "min_score")):
        answer = await (await client.post("/api/libraries/lib/duplicates", json=body)).json()
        assert answer["err_no"] == 1 and field in answer["err_msg"]
    assert (await (await client.get("/api/libraries/lib/duplicates/99")).json())["err_no"] == 1
    assert (await (await client.get("/api/libraries/lib/duplicates/x")).json())["err_no"] == 1
    assert (await (await client.post("/api/libraries/nope/duplicates", json={})).json())["err_no"] == 103


async def test_scans_end_cleanly_at_shutdown(aiohttp_client, embedder, tmp_path):
    """A scan still running when the app shuts down is cancelled, says why, and keeps no groups;
    the shutdown completes. The scan is held at the library's index thread, so it is certainly
    running when the shutdown starts."""
    cfg = Config(
        storage=StorageConfig(data_dir=str(tmp_path / "d")),
        model=ModelConfig(name="efficientnet_lite0"),
        index=IndexConfig(exact_threshold=3),  # through the index, whose thread the test holds
    )
    client = await aiohttp_client(create_app(cfg, embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "t", **body})).json()

    await fill(call)
    services = client.app[SERVICES]
    lib = await services.libraries.get("lib")
    gate = threading.Event()
    blocked = asyncio.get_running_loop().run_in_executor(lib.handle._executor, gate.wait)  # local backend
    closing = None
    try:
        started = (await (await client.post("/api/libraries/lib/duplicates", json={})).json())["scan"]
        assert started["status"] == "running"
        scan = services.duplicates.scans[started["id"]]
        closing = asyncio.ensure_future(client.close())
        deadline = asyncio.get_running_loop().time() + 30
        while scan.status == "running":  # the shutdown reaches the scan while it still runs
            assert asyncio.get_running_loop().time() < deadline, "the shutdown did not end the scan"
            await asyncio.sleep(0.01)
    finally:
        gate.set()
        await blocked
        if closing is not None:
            await closing
    assert scan.status == "cancelled" and scan.message == "the daemon is shutting down"
    assert scan.groups == [] and scan.finished is not None
    assert services.duplicates._tasks == {}  # nothing left running


# ---- a stale scan never removes the last copy of a picture ---------------------------------------------


async def test_remove_extras_refuses_a_scan_whose_kept_item_was_removed_since(client, api):
    await fill(api)
    scan = await scan_to_end(client)
    kept = ContSign.of_image(PICTURES["p1"]).to_json()
    assert (await api(f"{R}/remove", appid="lib", contsigns=[kept]))["removed"] == 1
    path = f"/api/libraries/lib/duplicates/{scan['id']}/remove"
    for body in (None, {"contsigns": [ContSign.of_image(PICTURES["p1 copy"]).to_json()]}):
        answer = await (await client.post(path, json=body)).json()
        assert answer["err_no"] == 1, answer
        assert "changed since the scan" in answer["err_msg"] and "scan again" in answer["err_msg"]
    # p1's copies are still there: the picture keeps a copy.
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == len(PICTURES) - 1
    again = await scan_to_end(client)
    answer = await (await client.post(f"/api/libraries/lib/duplicates/{again['id']}/remove")).json()
    assert answer["err_no"] == 0 and answer["removed"] == 2  # one of p1's copies, p2's copy
    found = await api(f"{R}/search", appid="lib", image=b64(PICTURES["p1"]), rn=1)
    assert found["data_items"][0]["score"] > 0.95  # a copy of p1 is left


async def test_remove_extras_refuses_a_scan_whose_kept_item_was_stored_again_since(client, api):
    await fill(api)
    scan = await scan_to_end(client)
    kept = ContSign.of_image(PICTURES["p2"]).to_json()
    assert (await api(f"{R}/remove", appid="lib", contsigns=[kept]))["removed"] == 1
    added = await api(f"{R}/add", appid="lib", image=b64(PICTURES["p2"]), features=[brief("p2 again")])
    assert added["err_no"] == 0
    one = ContSign.of_image(PICTURES["p2 copy"]).to_json()
    path = f"/api/libraries/lib/duplicates/{scan['id']}/remove"
    answer = await (await client.post(path, json={"contsigns": [one]})).json()
    assert answer["err_no"] == 1 and "changed since the scan" in answer["err_msg"], answer


# ---- a scan's budget -------------------------------------------------------------------------------------


def no_features_config(tmp_path, **index) -> Config:
    return Config(
        storage=StorageConfig(data_dir=str(tmp_path / "d"), local_features=False),
        model=ModelConfig(name="efficientnet_lite0"),
        index=IndexConfig(**index),
    )


async def test_min_score_zero_keeps_a_bounded_number_of_pairs_per_item(aiohttp_client, embedder, tmp_path):
    """Without local features every pair scores its way in at min_score 0: all n^2/2 pairs were
    kept (3.4 GB for two scans of 3,000 items); now each item keeps its best few."""
    client = await aiohttp_client(create_app(no_features_config(tmp_path), embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "t", **body})).json()

    assert (await call(f"{R}/signup", appid="lib"))["err_no"] == 0
    items = 40
    for seed in range(items):
        answer = await call(
            f"{R}/add", appid="lib", image=b64(jpeg(100 + seed)), features=[brief(f"i{seed}")]
        )
        assert answer["err_no"] == 0
    scan = await scan_to_end(client, {"min_score": 0})
    assert scan["status"] == "done" and scan["method"] == "exact"
    assert all(len(group["extras"]) <= NEIGHBOURS for group in scan["groups"]), shape(scan)
    assert scan["pairs_per_item"] == NEIGHBOURS
    assert scan["extras_total"] < items


async def test_one_running_scan_per_library(aiohttp_client, embedder, tmp_path):
    client = await aiohttp_client(create_app(no_features_config(tmp_path, exact_threshold=3), embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "t", **body})).json()

    await fill(call)
    async with index_thread_held(client):
        first = (await (await client.post("/api/libraries/lib/duplicates", json={})).json())["scan"]
        second = await (await client.post("/api/libraries/lib/duplicates", json={"min_score": 0.5})).json()
    assert first["status"] == "running"
    assert second["err_no"] == 0 and second["scan"]["id"] == first["id"]  # the running one answers
    assert second["scan"]["min_score"] == first["min_score"]
    for _ in range(300):  # once the first has ended, a start begins a new scan
        if (await (await client.get(f"/api/libraries/lib/duplicates/{first['id']}")).json())["scan"][
            "status"
        ] != "running":
            break
        await asyncio.sleep(0.1)
    done = await scan_to_end(client)
    assert done["id"] != first["id"]


# ---- one decision for the scan and the add policy ------------------------------------------------------


async def test_the_scan_and_the_add_policy_agree_on_pairs_the_check_cannot_look_at(client, api):
    """A picture with too few keypoints (a smooth ramp) and its re-encoded copy: the check cannot
    look at the pair, so the score alone decides, against the same floor on add and in a scan
    (the scan used to want 0.95 where the add accepted the library's own floor)."""
    ramp, copy = encode(gradient()), encode(gradient(), quality=60)
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    assert (await api(f"{R}/add", appid="lib", image=b64(ramp), features=[brief("ramp")]))["err_no"] == 0
    probe = await api(f"{R}/search", appid="lib", image=b64(copy), rn=1)
    score = probe["data_items"][0]["score"]
    floor = round(score - 0.005, 3)  # the library's floor, just under the pair's score
    answer = await client.put("/api/libraries/lib/dup_policy", json={"dup_min_score": floor})
    assert (await answer.json())["err_no"] == 0
    refused = await api(
        f"{R}/add", appid="lib", image=b64(copy), features=[brief("copy")], dup_policy="reject"
    )
    assert refused["err_no"] == 101, refused
    stored = await api(f"{R}/add", appid="lib", image=b64(copy), features=[brief("copy")], dup_policy="warn")
    assert stored["err_no"] == 0 and len(stored["data_items"]) == 1
    scan = await scan_to_end(client)  # the library's floors, as the add used
    assert shape(scan) == [("ramp", ["copy"])]
    above = await scan_to_end(client, {"min_score": round(score + 0.005, 3)})  # a floor above the pair
    assert shape(above) == []
