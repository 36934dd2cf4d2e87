"""A model per library with the real daemon: a library outlives a change of the
default model, and a re-embed survives kill -9 and resumes where it was."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.cli import EXIT_FAILED, main
from same_search.client import SameSearchError
from same_search.contsign import ContSign

LITE0 = 'name = "efficientnet_lite0"\nprecision = "fp32"\n'
#: Model A: Lite0 with average pooling, the default at first.
MODEL_A = f"[storage]\nkeep_originals = true\n[model]\n{LITE0}"
#: Model B (GeM pooling) becomes the default; A stays served as the profile "a".
MODEL_B_KEEPING_A = f'{MODEL_A}pooling = "gem"\n[models.a]\n{LITE0}'
MODEL_B_ONLY = f'{MODEL_A}pooling = "gem"\n'


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path, MODEL_A)
    yield d
    d.stop()


def add(d: Daemon, appid: str, seed: int) -> None:
    answer = d.rts("add", appid=appid, image=b64(jpeg(seed)), features=[brief(f"img {seed}")])
    assert answer["err_no"] == 0, answer


def best(d: Daemon, appid: str, seed: int) -> dict:
    answer = d.rts("search", appid=appid, image=b64(jpeg(seed)), rn=5)
    assert answer["err_no"] == 0, answer
    return answer["data_items"][0]


def models_by_name(d: Daemon) -> dict[str, dict]:
    return {name: model for model in d.get("admin", "/healthz")["models"] for name in model["names"]}


@pytest.mark.heavy
def test_a_library_keeps_serving_after_the_default_model_changes(daemon):
    daemon.start()
    daemon.rts("signup", appid="old")
    for seed in (1, 2, 3):
        add(daemon, "old", seed)
    fingerprint_a = models_by_name(daemon)["default"]["fingerprint"]
    assert daemon.terminate() == 0

    daemon.config.write_text(MODEL_B_KEEPING_A)
    daemon.start()
    models = models_by_name(daemon)
    assert models["a"]["fingerprint"] == fingerprint_a != models["default"]["fingerprint"]
    assert models["a"]["libraries"] == ["old"]
    hit = best(daemon, "old", 2)  # the query is embedded by model A, the library's own
    assert hit["contsign"] == ContSign.of_image(jpeg(2)).to_json() and hit["score"] > 0.999
    add(daemon, "old", 4)
    daemon.rts("signup", appid="new")  # new libraries take the new default
    add(daemon, "new", 1)
    assert models_by_name(daemon)["default"]["libraries"] == ["new"]
    assert daemon.terminate() == 0

    daemon.config.write_text(MODEL_B_ONLY)  # model A no longer configured: set aside, not mixed
    daemon.start()
    health = daemon.get("admin", "/healthz")
    assert [aside["appid"] for aside in health["unavailable"]] == ["old"]
    assert daemon.rts("search", appid="old", image=b64(jpeg(2)))["err_no"] == 6
    assert best(daemon, "new", 1)["score"] > 0.999


def reembed_job(d: Daemon, appid: str, job_id: int) -> dict:
    return d.get("admin", f"/api/libraries/{appid}/reembed/{job_id}")["job"]


@pytest.mark.heavy
def test_reembed_survives_kill_9_and_resumes_where_it_was(daemon):
    daemon.config.write_text(MODEL_B_KEEPING_A)
    daemon.start()
    daemon.rts("signup", appid="lib", model="a")
    total = 96  # three chunks of the job: the kill lands after the first
    for seed in range(total):
        add(daemon, "lib", seed)
    started = daemon.post("admin", "/api/libraries/lib/reembed", {"model": "default"})
    assert started["err_no"] == 0, started
    job_id = started["job"]["id"]
    deadline = time.monotonic() + 120
    while True:  # kill -9 once a few chunks are committed, well before the end
        job = reembed_job(daemon, "lib", job_id)
        assert job["status"] == "running", job
        if job["done"] >= 32:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    daemon.kill()
    done_at_kill = job["done"]
    assert done_at_kill < total

    daemon.start()
    # Meanwhile the library serves with its old model.
    assert best(daemon, "lib", 7)["score"] > 0.999
    deadline = time.monotonic() + 120
    while (job := reembed_job(daemon, "lib", job_id))["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "done", job
    assert job["resumed"] == 1 and job["resumed_at"] >= done_at_kill  # not from zero
    assert job["done"] == job["total"] == total
    models = models_by_name(daemon)
    assert models["default"]["libraries"] == ["lib"] and models["a"]["libraries"] == []
    hit = best(daemon, "lib", 7)
    assert hit["contsign"] == ContSign.of_image(jpeg(7)).to_json() and hit["score"] > 0.999
    stats = daemon.get("admin", "/api/libraries/lib")["library"]
    assert stats["items"] == total and stats["model_name"] == "default"
    assert daemon.terminate() == 0
    daemon.start()  # the switch and its index survive a restart
    assert best(daemon, "lib", 9)["score"] > 0.999


def test_cli_and_client_reembed(daemon, capsys):
    daemon.config.write_text(MODEL_B_KEEPING_A)
    daemon.start()
    client = daemon.client("lib")
    client.signup(model="a")
    for seed in range(5):
        client.add(jpeg(seed), f"img {seed}")
    with pytest.raises(SameSearchError, match="'nope' is not configured"):
        client.start_reembed("lib", "nope")
    ports = daemon.ports
    flags = ["--search-port", str(ports["search"]), "--feature-port", str(ports["feature"])]
    flags += ["--admin-port", str(ports["admin"])]
    assert main(["reembed", *flags, "--appid", "lib", "--model", "default"]) == 0
    assert "lib now serves model default (5 items)" in capsys.readouterr().out
    assert client.library("lib")["model_name"] == "default"
    [job] = client.reembeds("lib")
    assert job["status"] == "done" and client.reembed("lib", job["id"])["done"] == 5
    assert main(["reembed", *flags, "--appid", "lib", "--model", "default"]) == EXIT_FAILED
    assert "already on model 'default'" in capsys.readouterr().err
    assert main(["libraries", *flags]) == 0
    assert "[default]" in capsys.readouterr().out
