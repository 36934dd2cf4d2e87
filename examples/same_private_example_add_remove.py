#!/usr/bin/env python3
"""The spec's retrieval sample client (same_private_example_add_remove.py), ported to Python 3.

Only what Python 3 requires changed (urllib.request, bytes vs str, print) plus the server
address, which can also come from the AS_SERVER environment variable. Usage:

    python examples/same_private_example_add_remove.py signup
    python examples/same_private_example_add_remove.py rts_as_add query.jpg
    python examples/same_private_example_add_remove.py rts_as_search query.jpg
    python examples/same_private_example_add_remove.py rts_as_delete 1143248165,1517467661
"""

import base64
import json
import logging
import os
import struct
import sys
import urllib.request

logger = logging.getLogger()

AS_SERVER = os.environ.get("AS_SERVER", "http://127.0.0.1:8025")

ADD_IMG = "query.jpg"
IMG = ADD_IMG
APPID = "test"


def _post(route, params):
    data = json.dumps(params).encode()
    return urllib.request.urlopen(AS_SERVER + route, data=data).read().decode()


def rts_as_add(filename=ADD_IMG, appid=APPID):
    params = {
        "appid": appid,
        "format": "json",
        "from": "from_xx",
        "logid": 666,
        "brief": "brief",
        "image": base64.b64encode(open(filename, "rb").read()).decode(),
        "features": [
            {"fea_id": 1000, "fea_data": base64.b64encode(b"addtest").decode()},
            {"fea_id": 999, "fea_data": base64.b64encode(struct.pack("II", 0, 4)).decode()},
        ],
    }
    print(_post("/RTSAsService/add", params))


def rts_as_update(filename=IMG, appid=APPID):
    params = {
        "appid": appid,
        "format": "json",
        "from": "from_xx",
        "logid": 666,
        "image": base64.b64encode(open(filename, "rb").read()).decode(),
        "features": [{"fea_id": 1000, "fea_data": base64.b64encode(b"addtest").decode()}],
    }
    print(_post("/RTSAsService/update", params))


def rts_as_search(filename=IMG, appid=APPID):
    params = {
        "appid": appid,
        "image": base64.b64encode(open(filename, "rb").read()).decode(),
        "format": "json",
        "from": "from_yyy",
        "logid": 44,
    }
    print(_post("/RTSAsService/search", params))


def rts_as_delete(contsign, appid=APPID):
    sign1, sign2 = map(int, contsign.split(","))
    params = {
        "appid": appid,
        "format": "json",
        "from": "from_xx",
        "logid": 666,
        "contsign": {"sign1": sign1, "sign2": sign2},
    }
    print(_post("/RTSAsService/remove", params))


def rts_as_snapshot(appid=APPID):
    params = {"appid": appid, "from": "from_xx", "logid": 666}
    print(_post("/RTSAsService/snapshot", params))


def signup(appid=APPID):
    params = {"appid": appid, "from": "from_xx", "logid": 666}
    print(_post("/RTSAsService/signup", params))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        func = getattr(sys.modules[__name__], sys.argv[1])
        func(*sys.argv[2:])
    else:
        print(
            "api.py {signup,rts_as_add,rts_as_update,rts_as_search,rts_as_delete,rts_as_snapshot}",
            file=sys.stderr,
        )
