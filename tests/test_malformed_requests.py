"""Malformed and hostile requests: malformed input is err_no 1, never 11; log lines cannot be
forged; slow clients cannot hold connections; flags are honoured.

Each test failed before its fix. The in-process tests use the real app with its real SQLite
file; the connection and log tests use the real daemon process.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.cli import build_config, parse_args
from same_search.proto import imgfeature_pb2

R = "/RTSAsService"


async def _signed_up_with_items(api, appid: str = "lib", n: int = 2) -> list[dict]:
    assert (await api(f"{R}/signup", appid=appid))["err_no"] == 0
    added = []
    for seed in range(n):
        body = await api(f"{R}/add", appid=appid, image=b64(jpeg(seed)), features=[brief(f"i{seed}")])
        assert body["err_no"] == 0
        added.append(body["contsign"])
    return added


@pytest.mark.parametrize("field", ["pn", "rn", "tag_logic"])
async def test_non_ascii_digits_are_a_bad_request(api, field):
    await _signed_up_with_items(api, n=1)
    body = await api(f"{R}/search", appid="lib", image=b64(jpeg(0)), **{field: "²"})
    assert body["err_no"] == 1 and field in body["err_msg"]


async def test_feature_ids_with_non_ascii_digits_are_a_bad_request(api):
    request = imgfeature_pb2.FeatureRequest(image=jpeg(0), featureids="²")
    body = await api("/GeneralClassifyService/classify", appid="x", data=b64(request.SerializeToString()))
    assert body["err_no"] == 1 and "featureids" in body["err_msg"]


@pytest.mark.parametrize(
    "query",
    ["limit=²", "offset=²", "offset=1e23", "offset=99999999999999999999999999", "limit=-1", "offset=%C2%B2"],
)
async def test_management_paging_parameters_are_checked(client, api, query):
    await _signed_up_with_items(api, n=1)
    response = await client.get(f"/api/libraries/lib/items?{query}")
    assert response.status == 200
    assert (await response.json())["err_no"] == 1


@pytest.mark.parametrize("job", ["²", "1e3", "-1", "٣"])
async def test_job_ids_are_checked(client, job):
    response = await client.get(f"/api/jobs/{job}")
    assert (await response.json())["err_no"] == 1


async def test_console_paging_with_odd_offsets_still_renders(client, api):
    await _signed_up_with_items(api, n=1)
    for offset in ("²", "99999999999999999999999999"):
        response = await client.get(f"/libraries/lib?offset={offset}")
        assert response.status == 200 and "<html" in await response.text()


async def test_gzip_content_encoding_on_a_plain_body_is_a_bad_request(client, api):
    await _signed_up_with_items(api, n=1)
    plain = b'{"from": "t", "appid": "lib"}'
    response = await client.post(
        f"{R}/snapshot", data=plain, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    body = await response.json()
    assert response.status == 200 and body["err_no"] == 1 and "Content-Encoding" in body["err_msg"]
    # A body that really is gzip still works.
    response = await client.post(
        f"{R}/snapshot",
        data=gzip.compress(plain),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert (await response.json())["err_no"] == 0


async def test_search_by_contsign_racing_its_removal_is_never_an_internal_error(client, api):
    added = await _signed_up_with_items(api, n=12)
    answered_before = await searches_answered(client)
    codes: set[int] = set()
    for contsign in added:
        # Three distinct search requests around the removal (one coroutine passed three times
        # would be one request: gather awaits the same awaitable once).
        searches = [api(f"{R}/search", appid="lib", contsign=contsign) for _ in range(3)]
        remove = api(f"{R}/remove", appid="lib", contsign=contsign)
        results = await asyncio.gather(searches[0], remove, searches[1], searches[2])
        assert results[1]["err_no"] == 0 and results[1]["removed"] == 1
        codes |= {r["err_no"] for r in results}
    assert codes <= {0, 1}, codes
    assert await searches_answered(client) - answered_before == 3 * len(added)
    after = await api(f"{R}/search", appid="lib", contsign=added[0])
    assert after["err_no"] == 1 and "not in library" in after["err_msg"]


async def searches_answered(client) -> float:
    """Search requests the app has answered, by its own /metrics (every err_no)."""
    text = await (await client.get("/metrics")).text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("same_search_requests_total{") and 'route="/RTSAsService/search"' in line
    )


@pytest.mark.parametrize("appid", ["x" * 10_000, "a\r\nb", "a\x00b", "", "a,b", "tab\there", ".", ".."])
async def test_management_api_refuses_names_the_wire_api_refuses(client, api, appid):
    response = await client.post("/api/libraries", json={"appid": appid})
    assert (await response.json())["err_no"] == 1
    wire = await api(f"{R}/signup", appid=appid)
    assert wire["err_no"] == 1
    listed = await (await client.get("/api/libraries")).json()
    assert listed["libraries"] == []


async def test_export_of_a_name_needing_quotes_has_a_valid_header(client, api):
    await _signed_up_with_items(api, appid='q"uo té', n=1)
    response = await client.get("/api/libraries/q%22uo%20t%C3%A9/export")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="q_uo_t_.zip"')
    assert "filename*=UTF-8''q%22uo%20t%C3%A9.zip" in disposition


def test_admin_host_flag_is_honoured_by_the_daemon():
    for argv in (["--admin-host", "127.0.0.9"], ["serve", "--admin-host", "127.0.0.9"]):
        assert build_config(parse_args(argv)).server.admin_host == "127.0.0.9"


# ---- the real daemon: log lines and slow connections -------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("redteam"), "[server]\nheader_timeout_s = 1.0\nbody_timeout_s = 1.0\n")
    d.start()
    d.rts("signup", appid="lib")
    yield d
    d.stop()


def test_logid_and_path_cannot_forge_log_lines(daemon):
    forged = "FORGED same_search.access: route=/RTSAsService/remove appid=victim err_no=0"
    daemon.rts("snapshot", appid="lib", logid=f"1\n{forged}")
    with socket.create_connection(("127.0.0.1", daemon.ports["admin"]), timeout=10) as sock:
        path = b"/x%0A" + forged.replace(" ", "%20").encode()
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.recv(4096)
    # Both requests' access lines are in the log (each carries its escaped newline), then none
    # of the log's lines may start with the forged text.
    deadline = time.monotonic() + 30
    while True:
        lines = daemon.log.read_text().splitlines()
        if len([line for line in lines if "\\nFORGED" in line]) >= 2:
            break
        assert time.monotonic() < deadline, [line for line in lines if "FORGED" in line]
        time.sleep(0.02)
    assert not [line for line in lines if line.startswith("FORGED")]


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_headers_are_cut_off(daemon):
    """A slowloris connection: headers trickle in and never end. The daemon closes it."""
    with socket.create_connection(("127.0.0.1", daemon.ports["search"]), timeout=10) as sock:
        sock.sendall(b"POST /RTSAsService/snapshot HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        for _ in range(3):
            time.sleep(0.3)
            sock.sendall(b"X-Slow: 1\r\n")
        assert _closed_within(sock, 10.0)
        assert time.monotonic() - started < 10.0


def test_slow_body_gets_err_no_1(daemon):
    with socket.create_connection(("127.0.0.1", daemon.ports["search"]), timeout=10) as sock:
        sock.sendall(
            b"POST /RTSAsService/snapshot HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        sock.settimeout(10)
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 200") and '"err_no": 1' in reply and "not received" in reply
    assert daemon.rts("snapshot", appid="lib")["err_no"] == 0
