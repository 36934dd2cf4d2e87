"""The feature service (8120) on the real app: base64 protobuf in JSON, the same vectors search uses."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from conftest import b64
from images import jpeg

from same_search.contsign import ContSign
from same_search.proto import imgfeature_pb2

PATH = "/GeneralClassifyService/classify"


def request_body(image: bytes, featureids: str = "", **extra) -> dict:
    """What the spec's sample client sends."""
    proto = imgfeature_pb2.FeatureRequest()
    proto.image = image
    proto.query_sign = "0,0"
    for key, value in {"detect": "1", "usedb": "0"}.items():
        info = proto.info.texts.add()
        info.key, info.value = key, value
    proto.featureids = featureids
    body = {
        "appid": "123456",
        "logid": 0,
        "format": "json",
        "from": "test-python",
        "cmdid": "123",
        "clientip": "0.0.0.0",
        "data": b64(proto.SerializeToString()),
    }
    body.update(extra)
    return body


def features_of(body: dict) -> dict[int, bytes]:
    response = imgfeature_pb2.FeatureResponse()
    response.ParseFromString(base64.b64decode(body["result"]))
    return {f.fea_id: f.fea_data for f in response.features}


async def post(client, body) -> dict:
    response = await client.post(PATH, json=body)
    assert response.status == 200
    return await response.json()


async def test_classify_returns_descriptor_contsign_and_model(client, embedder):
    image = jpeg(3)
    body = await post(client, request_body(image))
    assert body["err_no"] == 0 and body["err_msg"] == "OK"
    features = features_of(body)
    assert set(features) == {2001, 2002, 2003}
    vector = np.frombuffer(features[2001], dtype="<f4")
    assert vector.shape == (embedder.info.dim,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    contsign = ContSign.of_image(image)
    assert struct.unpack("<II", features[2002]) == (contsign.sign1, contsign.sign2)
    assert (
        features[2003].decode() == f"{embedder.info.model_id}:{embedder.info.fingerprint}:{embedder.info.dim}"
    )


async def test_descriptor_is_the_vector_search_uses(client, api):
    image = jpeg(4)
    vector = np.frombuffer(features_of(await post(client, request_body(image, "2001")))[2001], dtype="<f4")
    await api("/RTSAsService/signup", appid="lib")
    await api(
        "/RTSAsService/add", appid="lib", image=b64(image), features=[{"fea_id": 1000, "fea_data": b64(b"x")}]
    )
    other = jpeg(5)
    other_vector = np.frombuffer(
        features_of(await post(client, request_body(other, "2001")))[2001], dtype="<f4"
    )
    hit = (await api("/RTSAsService/search", appid="lib", image=b64(other)))["data_items"][0]
    assert hit["score"] == pytest.approx(float(vector @ other_vector), abs=1e-4)


async def test_featureids_selects(client):
    assert set(features_of(await post(client, request_body(jpeg(1), "2002")))) == {2002}
    assert set(features_of(await post(client, request_body(jpeg(1), "2002, 2001")))) == {2001, 2002}


@pytest.mark.parametrize(
    ("body", "err_no", "text"),
    [
        (request_body(jpeg(1), "42"), 1, "featureids"),
        (request_body(jpeg(1), data="%%%"), 1, "data"),
        (request_body(jpeg(1), data=b64(b"\xff\xff\xff\xff")), 1, "FeatureRequest"),
        (request_body(jpeg(1), data=None), 1, "data"),
        (request_body(jpeg(1), **{"from": None}), 1, "from"),
        (request_body(b""), 100, "216200"),
        (request_body(b"GIF89a nonsense"), 100, "216201"),
        (request_body(jpeg(1, size=(16, 16))), 100, "216202"),
    ],
)
async def test_classify_errors(client, body, err_no, text):
    body = {k: v for k, v in body.items() if v is not None}
    data = await post(client, body)
    assert data["err_no"] == err_no and text in data["err_msg"], data
    assert "result" not in data


async def test_a_burst_shares_forward_passes_and_a_lone_request_does_not_wait(
    aiohttp_client, tmp_path, embedder
):
    """One batching path: concurrent requests ride together; a request alone is not held back
    for ``max_wait_ms`` (set absurdly high here so that waiting would show)."""
    import asyncio
    import re
    import time

    from same_search.app import create_app
    from same_search.config import Config, ModelConfig, StorageConfig
    from same_search.embed.embedder import Embedder

    model = ModelConfig(name="efficientnet_lite0", workers=1, max_batch=8, max_wait_ms=5000.0)
    cfg = Config(storage=StorageConfig(data_dir=str(tmp_path / "data")), model=model)
    client = await aiohttp_client(create_app(cfg, Embedder(model, loaded=embedder.model)))

    started = time.monotonic()
    assert (await post(client, request_body(jpeg(70))))["err_no"] == 0
    assert time.monotonic() - started < 4.0, "a lone request waited for max_wait_ms"

    answers = await asyncio.gather(*(post(client, request_body(jpeg(80 + i))) for i in range(16)))
    assert all(answer["err_no"] == 0 for answer in answers)
    metrics = await (await client.get("/metrics")).text()
    batches = float(re.search(r"^same_search_embed_batch_size_count (\S+)", metrics, re.M).group(1))
    images = float(re.search(r"^same_search_embed_batch_size_sum (\S+)", metrics, re.M).group(1))
    assert images == 17 and batches <= 6, (batches, images)
