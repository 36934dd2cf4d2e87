"""The extensions end to end on the real daemon process, configured through config.toml: a URL
fetched from an allowed loopback address (and one refused), a region search, and a library's
near-duplicate policy that survives a restart."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from typing import ClassVar

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import encode, jpeg, picture
from PIL import Image


class Pictures(http.server.BaseHTTPRequestHandler):
    """Serves jpeg(1) at any path; counts requests."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Pictures.hits.append(self.path)
        body = jpeg(1)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        return None


@pytest.fixture(scope="module")
def picture_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Pictures)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


CONFIG = """
[fetch]
enabled = true
allow = ["127.0.0.2/32"]
timeout_s = 5.0
"""


def test_extensions_on_the_daemon(tmp_path, picture_server):
    daemon = Daemon(tmp_path, CONFIG)
    daemon.start()
    try:
        assert daemon.rts("signup", appid="lib")["err_no"] == 0
        for seed in (1, 2, 3):
            assert (
                daemon.rts("add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"p{seed}")])["err_no"]
                == 0
            )
        found = daemon.rts("search", appid="lib", url=f"http://127.0.0.2:{picture_server}/a.jpg", rn=1)
        assert found["err_no"] == 0 and found["data_items"][0]["score"] > 0.999
        refused = daemon.rts("search", appid="lib", url=f"http://127.0.0.1:{daemon.ports['admin']}/healthz")
        assert refused["err_no"] == 1 and "loopback" in refused["err_msg"]
        assert Pictures.hits == ["/a.jpg"]

        panels = Image.new("RGB", (640, 240))
        panels.paste(picture(1), (0, 0))
        panels.paste(picture(2), (320, 0))
        box = {"x": 320, "y": 0, "w": 320, "h": 240}
        found = daemon.rts("search", appid="lib", image=b64(encode(panels)), region=box, rn=1)
        assert found["data_items"][0]["features"][0]["fea_data"] == b64(b"p2")

        request = urllib.request.Request(
            daemon.url("admin", "/api/libraries/lib/dup_policy"),
            data=json.dumps({"dup_policy": "reject"}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["err_no"] == 0
        assert daemon.terminate() == 0

        daemon.start()
        assert daemon.get("admin", "/api/libraries/lib")["library"]["dup_policy"] == "reject"
        copy = encode(picture(2), quality=50)
        answer = daemon.rts("add", appid="lib", image=b64(copy), features=[brief("copy")])
        assert answer["err_no"] == 101 and answer["err_msg"] == "duplicated add"
        assert daemon.rts("snapshot", appid="lib")["snapshot"]["index_size"] == 3
    finally:
        daemon.stop()
