"""/healthz and /metrics with tokens: monitoring still works, library names need the operator."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import b64, brief
from images import jpeg

from same_search.app import create_app
from same_search.config import AuthConfig, ConfigError, from_mapping

R = "/RTSAsService"
OPERATOR = "operator-token-of-some-length-0123456789"
SHOP = "shop-token-of-some-length-0123456789"
SECRET = "secret-shop-name"


async def app_with(aiohttp_client, config, embedder, **auth):
    tokens = {"shop": SHOP, "*": OPERATOR}
    client = await aiohttp_client(
        create_app(dataclasses.replace(config, auth=AuthConfig(tokens=tokens, **auth)), embedder)
    )
    body = {"from": "t", "appid": SECRET, "token": OPERATOR}
    assert (await (await client.post(f"{R}/signup", json=body)).json())["err_no"] == 0
    add = {**body, "image": b64(jpeg(1)), "features": [brief("one")]}
    assert (await (await client.post(f"{R}/add", json=add)).json())["err_no"] == 0
    return client


async def probes(client, headers: dict | None = None) -> tuple[dict, str]:
    health = await client.get("/healthz", headers=headers or {})
    metrics = await client.get("/metrics", headers=headers or {})
    assert health.status == 200 and metrics.status == 200
    return await health.json(), await metrics.text()


async def test_with_tokens_probes_name_no_library_without_the_operator_token(
    aiohttp_client, config, embedder
):
    client = await app_with(aiohttp_client, config, embedder)
    for headers in (None, {"X-Same-Token": SHOP}, {"X-Same-Token": "wrong"}):
        health, metrics = await probes(client, headers)
        assert health["err_no"] == 0 and health["status"] == "ok" and health["libraries"] == 1
        assert SECRET not in str(health) and SECRET not in metrics
        assert "same_search_requests_total" in metrics and "same_search_embed_queue_depth" in metrics
        assert "same_search_libraries 1.0" in metrics and "same_search_items 1.0" in metrics
    for headers in ({"X-Same-Token": OPERATOR}, {"Authorization": f"Bearer {OPERATOR}"}):
        health, metrics = await probes(client, headers)
        assert (
            SECRET in str(health["models"])
            and f'same_search_library_items{{appid="{SECRET}"}} 1.0' in metrics
        )
    assert (await client.get("/readyz")).status == 200


async def test_the_operator_may_show_names_to_everyone(aiohttp_client, config, embedder):
    client = await app_with(aiohttp_client, config, embedder, probes_name_libraries=True)
    health, metrics = await probes(client)
    assert SECRET in str(health["models"]) and SECRET in metrics


def test_the_setting_is_a_boolean():
    with pytest.raises(ConfigError, match="probes_name_libraries"):
        from_mapping({"auth": {"probes_name_libraries": "yes"}})
