"""What ``same_picture`` costs on each backend, and whether it decides alike on both.

Adds the first 30 photos of ``PHOTOS`` (ImageNet samples) to a library on the local backend and
on milvus-lite in file mode (the real app in this process, as the tests run it), then searches a
re-encoded centre crop of the first 15, twice each, plainly and with ``same_picture: 1``; prints
the median latency of each and how many crops were confirmed. Also prints the bytes per item the
local features take in Milvus (base64 in the item's field), over the same photos. The figures of
docs/scale-out.md ("Local features on Milvus"):

    .venv/bin/python bench/bench_same_picture_backends.py
"""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PHOTOS
from same_search.app import create_app
from same_search.config import Config, ModelConfig, StorageConfig
from same_search.embed.embedder import Embedder

R = "/RTSAsService"
PICTURES = 30
QUERIES = 15


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def centre_crop(data: bytes) -> bytes:
    """The middle two thirds of the picture, re-encoded at JPEG quality 80."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    out = io.BytesIO()
    image.crop((width // 6, height // 6, width * 5 // 6, height * 5 // 6)).save(out, "JPEG", quality=80)
    return out.getvalue()


async def measure(backend: str, embedder: Embedder, photos: list[bytes]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="same-picture-"))
    if backend == "local":
        storage = StorageConfig(data_dir=str(data_dir))
    else:
        storage = StorageConfig(data_dir=str(data_dir), backend="milvus", uri=str(data_dir / "lite.db"))
    config = Config(storage=storage, model=ModelConfig(name="efficientnet_lite0"))
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()

    async def call(route: str, **body: object) -> dict:
        return await (await client.post(route, json={"from": "bench", **body})).json()

    try:
        await call(f"{R}/signup", appid="lib")
        for i, photo in enumerate(photos):
            brief = {"fea_id": 1000, "fea_data": b64(str(i).encode())}
            answer = await call(f"{R}/add", appid="lib", image=b64(photo), features=[brief])
            assert answer["err_no"] == 0, answer
        queries = [b64(centre_crop(photo)) for photo in photos[:QUERIES]] * 2
        for same in (False, True):
            times, confirmed = [], 0
            for query in queries:
                extra = {"same_picture": 1} if same else {}
                started = time.perf_counter()
                answer = await call(f"{R}/search", appid="lib", image=query, rn=10, **extra)
                times.append(time.perf_counter() - started)
                confirmed += bool(answer["data_items"])
            kind = "same_picture" if same else "plain"
            line = f"{backend:7} {kind:12} median {1000 * statistics.median(times):6.1f} ms"
            print(line + (f", crops confirmed {confirmed} of {len(queries)}" if same else ""))
    finally:
        await client.close()


def milvus_bytes(photos: list[bytes]) -> None:
    """Bytes per item of the Milvus field, as the daemon computes it on add."""
    import dataclasses

    from same_search.backends.milvus.schema import features_value
    from same_search.embed.images import ImageLimits, decode, frame
    from same_search.verify import local_features

    limits, stored, field = ImageLimits(), [], []
    for photo in photos:
        size, _ = frame(photo, limits)
        picture = decode(photo, limits, local_features.WORKING_SIDE)
        blob = dataclasses.replace(local_features.extract(picture), original=size).to_bytes()
        stored.append(len(blob))
        field.append(len(features_value(blob) or ""))
    print(
        f"local features of {len(photos)} photos: stored form {statistics.mean(stored):,.0f} bytes on "
        f"average, in Milvus {statistics.mean(field):,.0f} (at most {max(field):,})"
    )


async def main() -> None:
    photos = [path.read_bytes() for path in sorted(PHOTOS.iterdir())[:PICTURES]]
    embedder = Embedder(ModelConfig(name="efficientnet_lite0", precision="fp32"))
    for backend in ("local", "milvus"):
        await measure(backend, embedder, photos)
    milvus_bytes([path.read_bytes() for path in sorted(PHOTOS.iterdir())[:200]])


if __name__ == "__main__":
    asyncio.run(main())
