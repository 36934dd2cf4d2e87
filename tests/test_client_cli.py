"""The Python clients and the client commands of ``python -m same_search``, against a real daemon.

One daemon process serves the whole module (starting one costs seconds); every test uses its own
library so the tests do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon import Daemon, free_port
from images import encode, jpeg, picture
from PIL import ImageOps

from same_search.cli import main
from same_search.client import (
    AlreadySignedUp,
    AsyncClient,
    BadImage,
    BadRequest,
    Client,
    ClientError,
    Duplicate,
    NotFound,
    NotSignedUp,
    SameSearchError,
    TransportError,
    contsign_of,
)
from same_search.config import AuthConfig, Config, ServerConfig

JPEG_MAGIC = b"\xff\xd8"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon on free ports, with the model the other tests use."""
    d = Daemon(tmp_path_factory.mktemp("daemon"), '[model]\nname = "efficientnet_lite0"\n')
    d.start()
    yield d
    d.stop()


def make_client(daemon: Daemon, appid: str | None = None) -> Client:
    ports = daemon.ports
    return Client("127.0.0.1", ports["search"], ports["feature"], ports["admin"], appid=appid)


def port_flags(daemon: Daemon) -> list[str]:
    ports = daemon.ports
    return [
        "--search-port",
        str(ports["search"]),
        "--feature-port",
        str(ports["feature"]),
        "--admin-port",
        str(ports["admin"]),
    ]


# ------------------------------------------------------------------------------------ sync client


def test_retrieval_round_trip(daemon: Daemon) -> None:
    client = make_client(daemon, "sync")
    client.signup()
    with pytest.raises(AlreadySignedUp):
        client.signup()
    one = client.add(jpeg(1), "one", tags=(1, 2))
    two = client.add(jpeg(2), b"two")
    three = client.add(jpeg(3), "three", tags=(4, 0))
    assert one == contsign_of(jpeg(1)) and two == contsign_of(jpeg(2))

    with pytest.raises(Duplicate) as dup:
        client.add(jpeg(1), "again")
    assert dup.value.err_no == 101
    assert dup.value.item is not None and dup.value.item.brief == b"one" and dup.value.item.tags == (1, 2)

    hits = client.search(image=jpeg(1))
    assert hits[0].contsign == one and len(hits) == 3 and not hits.has_more
    assert hits[0].score > 0.999 and hits[0].brief_text == "one" and hits[0].tags == (1, 2)
    page = client.search(image=jpeg(1), rn=1)
    assert len(page) == 1 and page.has_more
    assert client.search(contsign=two)[0].contsign == two
    assert [h.brief for h in client.search(image=jpeg(2), tags=(1, 0))] == [b"one"]
    assert len(client.search(image=jpeg(2), tags=(1, 4), tag_logic="any")) == 2

    assert client.update(contsign=two, brief="deux") == two
    assert client.search(contsign=two)[0].brief == b"deux"
    with pytest.raises(NotFound):
        client.update(image=jpeg(9), brief="missing")

    assert client.remove(contsign=three) == 1
    assert client.remove(contsigns=[three, (two.sign1, two.sign2)]) == 1
    assert client.remove(image=jpeg(1)) == 1
    assert client.snapshot() == {"tag": 0, "index_size": 0, "index_capacity": 0, "queue_size": 0}


def test_typed_errors(daemon: Daemon) -> None:
    client = make_client(daemon, "errors")
    with pytest.raises(NotSignedUp) as missing:
        client.snapshot()
    assert missing.value.err_no == 103 and isinstance(missing.value, SameSearchError)
    client.signup()
    with pytest.raises(BadImage) as bad:
        client.add(b"this is not an image", "x")
    assert bad.value.sub_code == 216201
    with pytest.raises(BadRequest):
        client.search(image=jpeg(1), rn=5000)
    with pytest.raises(ValueError):
        client.search()
    with pytest.raises(ValueError, match="appid"):
        make_client(daemon).snapshot()
    closed = Client("127.0.0.1", free_port(), free_port(), free_port(), appid="x", timeout=5)
    with pytest.raises(TransportError) as down:
        closed.snapshot()
    assert isinstance(down.value, ClientError) and not isinstance(down.value, SameSearchError)


def test_feature_service(daemon: Daemon) -> None:
    client = make_client(daemon, "features")
    features = client.classify(jpeg(1))
    sign = contsign_of(jpeg(1))
    assert set(features) == {2001, 2002, 2003}
    assert features[2002] == struct.pack("<II", sign.sign1, sign.sign2)
    assert features[2003].decode().startswith("efficientnet_lite0:")
    assert set(client.classify(jpeg(1), [2002])) == {2002}
    with pytest.raises(BadRequest):
        client.classify(jpeg(1), "7")
    a, b = client.descriptor(jpeg(1)), client.descriptor(jpeg(2))
    assert a.dtype == np.float32 and a.shape == (1280,) and abs(float(np.linalg.norm(a)) - 1) < 1e-4
    client.signup()
    client.add(jpeg(2), "two")
    assert abs(client.search(image=jpeg(1))[0].score - float(a @ b)) < 1e-3


def test_management(daemon: Daemon) -> None:
    client = make_client(daemon, "mgmt")
    assert client.health()["model"]["id"] == "efficientnet_lite0" and client.ready() is True
    assert client.create_library("mgmt")["items"] == 0
    with pytest.raises(AlreadySignedUp):
        client.create_library("mgmt")
    signs = [client.add(jpeg(seed), f"item {seed}") for seed in (11, 12, 13)]
    assert "mgmt" in [lib["appid"] for lib in client.libraries()]
    assert client.library("mgmt")["items"] == 3
    page = client.items("mgmt", offset=1, limit=1)
    assert page.total == 3 and page.has_more and page.items[0].brief == b"item 12"
    assert [item.contsign for item in client.iter_items("mgmt", page=2)] == signs
    item = client.item("mgmt", signs[0])
    assert item.brief_text == "item 11" and item.created and item.tags is None
    assert client.thumbnail("mgmt", signs[0]).startswith(JPEG_MAGIC)
    assert client.delete_item("mgmt", signs[0]) == 1
    with pytest.raises(NotFound):
        client.item("mgmt", signs[0])
    assert client.save("mgmt")["library"]["last_index_save"] is not None
    assert client.rebuild("mgmt")["library"]["items"] == 2
    compacted = client.compact("mgmt")
    rebuild = compacted["rebuild"]
    assert (rebuild["state"], rebuild["reason"], rebuild["done"], rebuild["total"]) == (
        "done",
        "compact",
        2,
        2,
    )
    assert compacted["library"]["items"] == 2 and compacted["library"]["rebuild"]["reason"] == "compact"
    took = rebuild["finished_at"] - rebuild["started_at"]  # the seconds reported are the rebuild's
    assert compacted["seconds"] == rebuild["seconds"] and abs(compacted["seconds"] - took) < 0.05
    assert 'same_search_library_items{appid="mgmt"} 2.0' in client.metrics()
    with pytest.raises(BadRequest, match="confirm"):
        client.delete_library("mgmt", confirm=False)
    assert client.delete_library("mgmt") == 2
    with pytest.raises(NotSignedUp):
        client.library("mgmt")


def test_from_config_uses_server_config_and_operator_token(daemon: Daemon) -> None:
    ports = daemon.ports
    server = ServerConfig(
        host="0.0.0.0",
        feature_port=ports["feature"],
        search_port=ports["search"],
        admin_port=ports["admin"],
    )
    cfg = Config(server=server, auth=AuthConfig(tokens={"shop": "t-shop", "*": "t-ops"}))
    client = Client.from_config(cfg)
    assert client.token == "t-ops"
    assert client.health()["status"] == "ok"  # this daemon has no tokens: the header is ignored
    assert Client.from_config(Config(auth=AuthConfig(tokens={"shop": "t"})), appid="shop").token == "t"
    assert AsyncClient.from_config(cfg, token="mine").endpoints.base("admin").endswith(f":{ports['admin']}")


# ----------------------------------------------------------------------------------- async client


async def test_async_client(daemon: Daemon) -> None:
    ports = daemon.ports
    async with AsyncClient(
        "127.0.0.1", ports["search"], ports["feature"], ports["admin"], appid="async"
    ) as client:
        with pytest.raises(NotSignedUp):
            await client.snapshot()
        await client.signup()
        signs = await asyncio.gather(*(client.add(jpeg(seed), f"a{seed}") for seed in (21, 22, 23)))
        with pytest.raises(Duplicate) as dup:
            await client.add(jpeg(21), "again")
        assert dup.value.item is not None and dup.value.item.brief == b"a21"
        hits = await client.search(image=jpeg(22), rn=2)
        assert hits[0].contsign == signs[1] and hits.has_more
        assert (await client.search(contsign=signs[2]))[0].brief == b"a23"
        assert await client.update(contsign=signs[2], tags=(7, 0)) == signs[2]
        assert [h.contsign for h in await client.search(image=jpeg(21), tags=(7, 0))] == [signs[2]]
        vector = await client.descriptor(jpeg(22))
        assert abs(float(vector @ vector) - 1) < 1e-4
        assert 2002 in await client.classify(jpeg(22), "2002")
        assert (await client.health())["status"] == "ok" and await client.ready()
        assert "same_search_requests_total" in await client.metrics()
        assert "async" in [lib["appid"] for lib in await client.libraries()]
        assert (await client.library("async"))["items"] == 3
        page = await client.items("async", limit=2)
        assert page.total == 3 and len(page.items) == 2
        assert {item.contsign async for item in client.iter_items("async", page=2)} == set(signs)  # any order
        assert (await client.item("async", signs[0])).brief == b"a21"
        assert (await client.thumbnail("async", signs[0])).startswith(JPEG_MAGIC)
        assert await client.delete_item("async", signs[0]) == 1
        assert await client.remove(image=jpeg(22)) == 1
        assert (await client.save("async"))["library"]["items"] == 1
        assert (await client.rebuild("async"))["library"]["items"] == 1
        assert (await client.compact("async"))["library"]["items"] == 1
        assert (await client.snapshot())["index_size"] == 1
        with pytest.raises(AlreadySignedUp):
            await client.create_library("async")
        assert await client.delete_library("async") == 1
    async with AsyncClient("127.0.0.1", free_port(), free_port(), free_port(), appid="x", timeout=5) as down:
        with pytest.raises(TransportError):
            await down.snapshot()


# ------------------------------------------------------------------ jobs, export and import


def test_jobs_export_and_import(daemon: Daemon, tmp_path: Path) -> None:
    import io
    import time
    import zipfile

    client = make_client(daemon, appid="jobs")
    client.signup()
    folder = tmp_path / "incoming"
    folder.mkdir()
    for seed in range(3):
        (folder / f"{seed}.jpg").write_bytes(jpeg(500 + seed))
    job = client.create_job("jobs", directory=str(folder))
    deadline = time.monotonic() + 60
    while (job := client.job(job["id"]))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (job["status"], job["done"]) == ("done", 3)
    assert client.cancel_job(job["id"])["status"] == "done"  # nothing left to cancel
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("z.jpg", jpeg(510))
    uploaded = client.upload_job("jobs", buffer.getvalue())
    assert uploaded["id"] in [j["id"] for j in client.jobs()]
    while client.job(uploaded["id"])["status"] in ("queued", "running"):
        time.sleep(0.2)
    export = client.export_library("jobs", vectors=True)
    assert export[:2] == b"PK"
    assert client.import_library("jobs-copy", export)["imported"] == 4
    assert client.snapshot(appid="jobs-copy")["index_size"] == 4
    with pytest.raises(ValueError):
        client.create_job("jobs")


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """10 distinct pictures (4 in a subfolder), a byte-identical copy, a corrupt JPEG, a text file."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for seed in range(10):
        folder = root / "sub" if seed >= 6 else root
        (folder / f"p{seed:02d}.jpg").write_bytes(jpeg(100 + seed))
    (root / "sub" / "copy.jpg").write_bytes(jpeg(100))
    (root / "sub" / "broken.jpg").write_bytes(jpeg(200)[:300])
    (root / "notes.txt").write_text("not an image")
    return root


def run_cli(daemon: Daemon, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, *port_flags(daemon)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_import_resume_search_libraries_snapshot(
    daemon: Daemon, photo_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(daemon, capsys, "import", str(photo_dir), "--appid", "cli")
    assert code == 1 and "does not exist; add --signup" in err

    code, out, err = run_cli(daemon, capsys, "import", str(photo_dir), "--appid", "cli", "--signup")
    assert code == 1
    assert "12 files: 10 added, 1 already stored, 1 failed" in out
    assert "failed: sub/broken.jpg: err_no 100: 216201" in err
    assert "import: 12/12 done, 10 added, 1 duplicates, 1 failed" in err and "images/s, ETA" in err
    stored = {item.brief_text for item in make_client(daemon).iter_items("cli")}
    assert {"p01.jpg", "sub/p06.jpg", "sub/p09.jpg"} <= stored and len(stored) == 10

    code, out, _ = run_cli(daemon, capsys, "import", str(photo_dir), "--appid", "cli")
    assert code == 1 and "12 files: 0 added, 11 already stored, 1 failed" in out
    (photo_dir / "sub" / "broken.jpg").unlink()
    code, out, _ = run_cli(daemon, capsys, "import", str(photo_dir), "--appid", "cli", "-j", "3")
    assert code == 0 and "11 files: 0 added, 11 already stored, 0 failed" in out

    code, out, _ = run_cli(
        daemon, capsys, "search", str(photo_dir / "p01.jpg"), "--appid", "cli", "--rn", "3"
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "score", "contsign", "brief"]
    assert lines[1].split() == ["1", "1.0000", str(contsign_of(jpeg(101))), "p01.jpg"]
    assert len(lines) == 5 and "raise --rn" in lines[4]

    code, out, _ = run_cli(daemon, capsys, "libraries")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert code == 0 and rows["cli"][1:3] == ["10", "exact"]

    # A separate process that finds the daemon through ./config.toml, as an operator's shell would.
    ports = daemon.ports
    (tmp_path / "config.toml").write_text(
        f"[server]\nsearch_port = {ports['search']}\nfeature_port = {ports['feature']}\n"
        f"admin_port = {ports['admin']}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "same_search", "snapshot", "--appid", "cli"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "index_size 10" in done.stdout.splitlines()


def test_cli_errors(daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg(1))
    code, _, err = run_cli(daemon, capsys, "search", str(query), "--appid", "nobody")
    assert code == 1 and "err_no 103" in err
    code, _, err = run_cli(daemon, capsys, "snapshot", "--appid", "nobody")
    assert code == 1 and "err_no 103" in err
    code = main(["libraries", "--admin-port", str(free_port())])
    assert code == 3 and "cannot reach the daemon" in capsys.readouterr().err
    code, _, err = run_cli(daemon, capsys, "import", str(tmp_path / "none"), "--appid", "x")
    assert code == 2 and "not a directory" in err


def test_cli_import_and_a_folder_job_take_the_same_files(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One finder: every decoder suffix in any case, no hidden files or folders, regular files
    only (a FIFO would hang a reader), file symlinks followed, folder symlinks not; one limit."""
    import os
    import time

    from PIL import Image

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / ".thumbs").mkdir()
    (tree / "a.jpg").write_bytes(jpeg(600))
    (tree / "B.JPE").write_bytes(jpeg(601))
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tree / "sub" / "c.ppm")
    (tree / "sub" / "d.png").write_bytes(jpeg(603))  # the decoder goes by content, not suffix
    (tree / ".hidden.jpg").write_bytes(jpeg(604))
    (tree / ".thumbs" / "e.jpg").write_bytes(jpeg(605))
    (tree / "notes.txt").write_text("not an image")
    (tree / "link.jpg").symlink_to(tree / "a.jpg")
    (tree / "loop").symlink_to(tree)
    os.mkfifo(tree / "pipe.jpg")
    with (tree / "huge.jpg").open("wb") as fh:  # sparse: 20 MB on paper
        fh.truncate(20 * 1024 * 1024)
    expected_stored = {"a.jpg", "B.JPE", "sub/c.ppm", "sub/d.png"}

    code, out, err = run_cli(daemon, capsys, "import", str(tree), "--appid", "same-cli", "--signup")
    assert code == 1 and "6 files: 4 added, 1 already stored, 1 failed" in out, (out, err)
    assert "failed: huge.jpg: 20971520 bytes, above the image limit of 10485760" in err
    client = make_client(daemon, appid="same-job")
    client.signup()
    job = client.create_job("same-job", directory=str(tree))
    deadline = time.monotonic() + 60
    while (job := client.job(job["id"]))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (job["total"], job["done"], job["duplicates"], job["failed"]) == (6, 4, 1, 1)
    assert [e["file"] for e in job["errors"]] == ["huge.jpg"]
    assert "above the image limit of 10485760" in job["errors"][0]["reason"]
    for appid in ("same-cli", "same-job"):
        stored = {item.brief_text for item in make_client(daemon).iter_items(appid)}
        assert stored in (expected_stored, expected_stored - {"a.jpg"} | {"link.jpg"}), stored


def test_one_retry_rule_for_the_cli_and_jobs() -> None:
    from same_search.cli import folder_import as cli
    from same_search.imports import jobs
    from same_search.imports.retry import RETRYABLE

    assert cli.retryable is jobs.retryable
    assert sorted(int(e) for e in RETRYABLE) == [2, 5, 99]


def test_same_picture_search_on_the_real_daemon(daemon: Daemon) -> None:
    """search(same_picture=True) keeps the edited copy's original and drops everything else."""
    client = make_client(daemon, "same_picture")
    client.signup()
    stored = {seed: client.add(encode(picture(seed, (480, 360))), f"p{seed}") for seed in (2, 3, 11)}
    crop = picture(3, (480, 360)).crop((90, 60, 410, 300))
    query = encode(ImageOps.mirror(crop), quality=40)
    assert len(client.search(image=query)) == 3
    assert [hit.contsign for hit in client.search(image=query, same_picture=True)] == [stored[3]]


def test_result_order_options_on_the_real_daemon(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """query_expansion and promote_same_picture reach the daemon; scores never change; the space
    a library ranks in is shown and chosen through the client and the CLI."""
    from test_promotion import PALETTE, QUERY
    from test_same_picture import scene

    client = make_client(daemon, "order")
    client.signup()
    stored = [client.add(encode(scene(PALETTE, layout)), f"layout-{layout}") for layout in range(1, 7)]
    plain = client.search(image=QUERY, query_expansion=0, promote_same_picture=False)
    assert [hit.score for hit in plain] == sorted((hit.score for hit in plain), reverse=True)
    assert plain[0].contsign != stored[0]  # the descriptor ranks a look-alike first
    scores = {str(hit.contsign): hit.score for hit in plain}
    for hits in (client.search(image=QUERY), client.search(image=QUERY, promote_same_picture=False)):
        assert {str(hit.contsign): hit.score for hit in hits} == pytest.approx(scores, abs=1e-6)
    # A library answers in descending score until its operator chooses re-ranking; a request
    # can ask for promotion either way.
    default = client.search(image=QUERY)
    assert default.ranking == "score" and [h.contsign for h in default] == [h.contsign for h in plain]
    assert client.set_ranking("order", "reranked")["ranking"]["order"] == "reranked"
    reranked = client.search(image=QUERY)
    assert reranked.ranking == "reranked" and reranked[0].contsign == stored[0] and reranked[0].same_picture
    promoted = client.search(image=QUERY, query_expansion=0, promote_same_picture=True)
    assert promoted[0].contsign == stored[0]
    assert run_cli(daemon, capsys, "space", "--appid", "order")[:2] == (0, "order: native cosine\n")
    chosen = client.set_space("order", "learned", wait=True)["space"]  # 6 items: too few for a fit
    assert chosen["chosen"] == "learned" and chosen["ranks_in"] == "native", chosen
    code, out, _ = run_cli(daemon, capsys, "space", "--appid", "order", "native", "--wait")
    assert code == 0 and out == "order: native cosine\n"
    assert client.library("order")["space"]["chosen"] == "native"


# ------------------------------------------------------------------ a client that explains itself


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_help_renders_each_client_with_its_real_arguments(cls: type) -> None:
    """help() must render (pydoc looks every attribute up on each class of the MRO), and the
    constructor shows the parameters the client takes rather than ``*args, **kwargs``."""
    import inspect
    import pydoc

    import same_search.client as module

    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for method in ("search(", "add(", "add_folder(", "signup(", "jobs(", "delete_library("):
        assert method in text
    assert "min_score" in text and "region" in text and "Args:" in text
    params = inspect.signature(cls).parameters
    expected = ["host", "search_port", "feature_port", "admin_port", "admin_host", "token", "appid"]
    assert list(params)[: len(expected)] == expected
    assert ("limit" in params) == (cls is AsyncClient)
    search = inspect.signature(cls.search)
    assert {"min_score", "region", "image", "contsign", "rn"} <= set(search.parameters)
    assert search.return_annotation == "SearchResult"
    assert "Usage::" in pydoc.render_doc(module, renderer=pydoc.plaintext)


def test_search_by_region_and_min_score_and_briefs_as_text(daemon: Daemon) -> None:
    client = make_client(daemon, "region-client")
    client.signup()
    left, right = picture(31), picture(32)
    panels = picture(0, (640, 240))
    panels.paste(left, (0, 0))
    panels.paste(right, (320, 0))
    client.add(encode(left), "left, ünïcode")
    client.add(encode(right), b"\xff\xfe binary")
    box = {"x": 0.5, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}
    hits = client.search(image=encode(panels), region=box, rn=1)
    assert hits[0].brief == b"\xff\xfe binary"
    hits = client.search(image=encode(left), min_score=0.99)
    assert [hit.brief_text for hit in hits] == ["left, ünïcode"]


def test_add_folder_from_both_clients(daemon: Daemon, photo_dir: Path) -> None:
    client = make_client(daemon)
    with pytest.raises(ClientError, match="does not exist"):
        client.add_folder(photo_dir, appid="folder-client")
    stats = client.add_folder(photo_dir, appid="folder-client", signup=True)
    assert (stats.added, stats.duplicates, stats.failed) == (10, 1, 1)
    assert stats.failures[0][0] == "sub/broken.jpg"
    stored = {item.brief_text for item in client.iter_items("folder-client")}
    assert {"p00.jpg", "sub/p09.jpg"} <= stored and len(stored) == 10

    async def again() -> tuple[int, int]:
        ports = daemon.ports
        async with AsyncClient(
            "127.0.0.1", ports["search"], ports["feature"], ports["admin"], appid="folder-client"
        ) as aclient:
            stats = await aclient.add_folder(str(photo_dir))
            return stats.added, stats.duplicates

    assert asyncio.run(again()) == (0, 11)
    with pytest.raises(ClientError, match="is not a directory on this machine"):
        client.add_folder(photo_dir / "missing", appid="folder-client")


# ------------------------------------------------------------------------ a CLI that does the job


def test_every_command_help_opens_with_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    from same_search.cli.main import COMMANDS

    for argv in [[name] for name in COMMANDS] + [["jobs", action] for action in ("list", "start", "show")]:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        paragraphs = capsys.readouterr().out.split("\n\n")
        assert not paragraphs[1].startswith(("options:", "positional arguments:")), argv


def test_cli_signup_remove_delete_library(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], photo_dir: Path, tmp_path: Path
) -> None:
    code, out, _ = run_cli(daemon, capsys, "signup", "--appid", "cli-manage")
    assert code == 0 and "created library cli-manage" in out
    code, _, err = run_cli(daemon, capsys, "signup", "--appid", "cli-manage")
    assert code == 1 and "err_no 104" in err
    (photo_dir / "sub" / "broken.jpg").unlink()
    code, out, _ = run_cli(daemon, capsys, "import", str(photo_dir), "--appid", "cli-manage")
    assert code == 0 and "10 added" in out

    briefs = tmp_path / "briefs.txt"
    briefs.write_text("p00.jpg\nsub/p06.jpg\nnot-stored.jpg\n")
    signs = tmp_path / "signs.txt"
    signs.write_text(f"{contsign_of(jpeg(102))}\n")
    code, out, _ = run_cli(
        daemon,
        capsys,
        "remove",
        "--appid",
        "cli-manage",
        str(contsign_of(jpeg(101))),
        "--image",
        str(photo_dir / "p03.jpg"),
        "--contsigns-file",
        str(signs),
        "--briefs-file",
        str(briefs),
    )
    assert code == 0 and "removed 5 of 5 items from cli-manage" in out
    left = {item.brief_text for item in make_client(daemon).iter_items("cli-manage")}
    assert left == {"p04.jpg", "p05.jpg", "sub/p07.jpg", "sub/p08.jpg", "sub/p09.jpg"}
    code, _, err = run_cli(daemon, capsys, "remove", "--appid", "cli-manage", "12")
    assert code == 2 and "not a contsign" in err

    code, _, err = run_cli(daemon, capsys, "delete-library", "--appid", "cli-manage")
    assert code == 2 and "--yes" in err
    code, out, _ = run_cli(daemon, capsys, "delete-library", "--appid", "cli-manage", "--yes")
    assert code == 0 and "deleted library cli-manage (5 items)" in out
    assert "cli-manage" not in {lib["appid"] for lib in make_client(daemon).libraries()}


def test_cli_jobs_start_show_list_cancel(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], photo_dir: Path
) -> None:
    make_client(daemon, "cli-jobs").signup()
    code, out, err = run_cli(
        daemon, capsys, "jobs", "start", "--appid", "cli-jobs", "--dir", str(photo_dir), "--wait"
    )
    assert code == 0, err
    job_id = int(out.split()[1])
    assert f"job {job_id} done: dir {photo_dir} into cli-jobs" in out
    assert "12/12 done, 10 added, 1 duplicates, 1 failed" in out
    assert "failed: sub/broken.jpg: err_no 100" in out
    code, out, _ = run_cli(daemon, capsys, "jobs", "show", str(job_id))
    assert code == 0 and f"job {job_id} done" in out
    code, out, _ = run_cli(daemon, capsys, "jobs")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["id", "status", "appid"]
    assert any(line.split()[:3] == [str(job_id), "done", "cli-jobs"] for line in out.splitlines())
    code, out, _ = run_cli(daemon, capsys, "jobs", "cancel", str(job_id))
    assert code == 0 and f"job {job_id} done at 12/12" in out  # an ended job stays as it ended
    code, _, err = run_cli(daemon, capsys, "jobs", "start", "--appid", "cli-jobs", "--dir", "/nowhere/x")
    assert code == 1 and "err_no 1" in err


def test_cli_search_region_and_export_without_vectors(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client = make_client(daemon, "cli-region")
    client.signup()
    client.add(encode(picture(41)), "left")
    client.add(encode(picture(42)), "right")
    panels = picture(0, (640, 240))
    panels.paste(picture(41), (0, 0))
    panels.paste(picture(42), (320, 0))
    query = tmp_path / "panels.jpg"
    query.write_bytes(encode(panels))
    for box, extra in (("320,0,320,240", []), ("0.5,0,0.5,1", ["--fraction"])):
        code, out, _ = run_cli(
            daemon,
            capsys,
            "search",
            str(query),
            "--appid",
            "cli-region",
            "--rn",
            "1",
            "--region",
            box,
            *extra,
        )
        assert code == 0 and out.splitlines()[1].split()[-1] == "right"
    code, _, err = run_cli(daemon, capsys, "search", str(query), "--appid", "cli-region", "--region", "1,2")
    assert code == 2 and "X,Y,W,H" in err

    bare = tmp_path / "bare.zip"
    code, _, err = run_cli(daemon, capsys, "export", "--appid", "cli-region", "--out", str(bare))
    assert code == 0 and "warning" in err and "--vectors" in err
    code, _, err = run_cli(daemon, capsys, "import", str(bare), "--appid", "cli-region-copy")
    assert code == 1 and "--vectors" in err and "?vectors" not in err
    full = tmp_path / "full.zip"
    code, _, err = run_cli(daemon, capsys, "export", "--appid", "cli-region", "--out", str(full), "--vectors")
    assert code == 0 and "warning" not in err
    code, out, _ = run_cli(daemon, capsys, "import", str(full), "--appid", "cli-region-copy")
    assert code == 0 and "imported 2 items" in out


# ------------------------------------------------------------------------------------- folder sync


def _wait_job(client: Client, job_id: int, timeout: float = 120) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while (job := client.job(job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def _briefs(client: Client, appid: str) -> dict[str, str]:
    return {item.brief_text: str(item.contsign) for item in client.iter_items(appid)}


def test_folder_sync_adds_updates_removes_and_is_idempotent(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "followed"
    folder.mkdir()
    for n in range(1, 6):
        (folder / f"f{n}.jpg").write_bytes(jpeg(300 + n))
    client = make_client(daemon)
    client.create_library("followed")
    code, out, err = run_cli(
        daemon,
        capsys,
        "jobs",
        "start",
        "--appid",
        "followed",
        "--sync",
        str(folder),
        "--remove-missing",
        "--wait",
    )
    assert code == 0, err
    assert "5/5 done, 5 added, 0 updated, 0 removed, 0 unchanged, 0 failed" in out
    assert _briefs(client, "followed") == {f"f{n}.jpg": str(contsign_of(jpeg(300 + n))) for n in range(1, 6)}

    (folder / "f1.jpg").write_bytes(jpeg(311))  # changed content: its item is replaced
    (folder / "sub").mkdir()
    (folder / "f2.jpg").rename(folder / "sub" / "f2b.jpg")  # moved: its item follows
    (folder / "f3.jpg").unlink()  # gone: its item is removed
    (folder / "f6.jpg").write_bytes(jpeg(306))  # new
    (folder / "f4copy.jpg").write_bytes(jpeg(304))  # a second copy of a stored picture
    job = _wait_job(client, client.create_job("followed", sync=str(folder), remove_missing=True)["id"])
    counts = {
        key: job[key] for key in ("status", "total", "done", "updated", "removed", "duplicates", "failed")
    }
    assert counts == {
        "status": "done",
        "total": 6,
        "done": 1,
        "updated": 2,
        "removed": 1,
        "duplicates": 3,
        "failed": 0,
    }
    expected = {
        "f1.jpg": str(contsign_of(jpeg(311))),
        "sub/f2b.jpg": str(contsign_of(jpeg(302))),
        "f4.jpg": str(contsign_of(jpeg(304))),
        "f5.jpg": str(contsign_of(jpeg(305))),
        "f6.jpg": str(contsign_of(jpeg(306))),
    }
    assert _briefs(client, "followed") == expected

    again = _wait_job(client, client.create_job("followed", sync=str(folder), remove_missing=True)["id"])
    assert (again["done"], again["updated"], again["removed"], again["duplicates"]) == (0, 0, 0, 6)
    assert _briefs(client, "followed") == expected

    (folder / "f5.jpg").unlink()  # without remove_missing a gone file's item stays
    kept = _wait_job(client, client.create_job("followed", sync=str(folder))["id"])
    assert (
        kept["removed"] == 0 and kept["remove_missing"] is False and "f5.jpg" in _briefs(client, "followed")
    )
    with pytest.raises(BadRequest, match="remove_missing"):
        client.create_job("followed", directory=str(folder), remove_missing=True)


def test_a_sync_schedule_through_the_cli_and_the_client(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import time

    folder = tmp_path / "scheduled"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(321))
    client = make_client(daemon)
    client.create_library("scheduled")
    argv = ("sync", "set", "--appid", "scheduled", "--folder", str(folder), "--every", "6h")
    code, out, err = run_cli(daemon, capsys, *argv, "--start-in", "3600")
    assert code == 0, err
    assert f"scheduled: follows {folder} every 6h" in out and "last run never" in out
    schedule = client.sync_schedule("scheduled")
    assert schedule["last_job"] is None and schedule["next_run"] > time.time() + 3000  # not due yet

    code, out, err = run_cli(daemon, capsys, "sync", "run", "--appid", "scheduled", "--wait")
    assert code == 0 and "started" in out and "1/1 done, 1 added" in out, (out, err)
    code, out, _ = run_cli(daemon, capsys, "sync")
    assert "scheduled: follows" in out and "last result: job" in out and "done: 1 added" in out
    assert [s["appid"] for s in client.sync_schedules()] == ["scheduled"]
    with pytest.raises(BadRequest, match="every must be from 1m"):
        client.set_sync("scheduled", str(folder), "5s")

    item = next(client.iter_items("scheduled"))
    edited = client.edit_item("scheduled", item.contsign, "renamed.jpg", tags=(4, 5))
    assert (edited.brief_text, edited.tags) == ("renamed.jpg", (4, 5))
    assert client.edit_item("scheduled", item.contsign, b"\xff\x00").brief == b"\xff\x00"

    code, out, _ = run_cli(daemon, capsys, "sync", "stop", "--appid", "scheduled")
    assert code == 0 and "no longer follows" in out
    assert client.sync_schedule("scheduled") is None and client.delete_sync("scheduled") == 0


def test_folder_sync_survives_a_restart(daemon: Daemon, tmp_path: Path) -> None:
    """Killed mid-run (SIGKILL), the sync job resumes from its last chunk when the daemon is
    back and ends with the library equal to the folder. Runs last: it restarts the module's daemon."""
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    for n in range(160):
        (folder / f"img{n:03d}.jpg").write_bytes(encode(picture(500 + n, (96, 96))))
    client = make_client(daemon)
    client.create_library("sync-restart")
    job_id = client.create_job("sync-restart", sync=str(folder), remove_missing=True)["id"]
    deadline = time.monotonic() + 120
    while (job := client.job(job_id))["position"] == 0:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.02)
    daemon.kill()
    assert job["position"] < job["total"], "the job ended before the kill: nothing was resumed"
    daemon.start()
    job = _wait_job(client, job_id)
    assert job["status"] == "done" and job["position"] == job["total"] == 160 and job["failed"] == 0
    assert set(_briefs(client, "sync-restart")) == {f"img{n:03d}.jpg" for n in range(160)}


def test_an_item_without_thumbnail_has_a_placeholder_image_on_request(daemon: Daemon, tmp_path: Path) -> None:
    """Items loaded from an export have no thumbnail: the API says so (err_no 102), and with
    ``?placeholder=1`` (what the console asks) answers an image instead of JSON."""
    import urllib.request

    client = make_client(daemon, "thumbless")
    client.signup()
    sign = client.add(jpeg(61), "x")
    client.import_library("thumbless-copy", client.export_library("thumbless", vectors=True))
    with pytest.raises(NotFound):
        client.thumbnail("thumbless-copy", sign)
    url = daemon.url("admin", f"/api/libraries/thumbless-copy/items/{sign}/thumbnail?placeholder=1")
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers.get_content_type() == "image/svg+xml" and b"<svg" in answer.read()
    with urllib.request.urlopen(url.replace("thumbless-copy", "thumbless"), timeout=10) as answer:
        assert answer.read()[:2] == JPEG_MAGIC  # a stored thumbnail is served as always
