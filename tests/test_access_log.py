"""The access log line: every field a client chooses is cut to a bounded length."""

from __future__ import annotations

import json
import logging

from same_search.logs import JsonFormatter, TextFormatter

R = "/RTSAsService"
ACCESS = "same_search.access"


def access_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS]


async def test_a_huge_logid_appid_and_path_make_a_short_log_line(client, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    huge = "7" * (2 * 1024 * 1024)
    body = {"from": "t", "logid": huge, "appid": "a" * 5000}
    assert (await (await client.post(f"{R}/snapshot", json=body)).json())["err_no"] == 1
    path = "/api/libraries/" + "b" * 6000
    assert (await client.get(path)).status == 200
    records = access_lines(caplog)
    assert len(records) == 2
    for record in records:
        for formatter in (TextFormatter("%(message)s"), JsonFormatter()):
            line = formatter.format(record)
            assert len(line) < 2000, line[:200]
        for field in ("logid", "appid", "route"):
            assert len(str(getattr(record, field))) <= 300
    first = json.loads(JsonFormatter().format(records[0]))
    assert first["logid"].startswith("7777") and "2097152 characters" in first["logid"]


async def test_ordinary_fields_are_logged_whole(client, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    await client.post(f"{R}/snapshot", json={"from": "t", "logid": 12345, "appid": "shop"})
    [record] = access_lines(caplog)
    assert record.logid == 12345 and record.appid == "shop" and record.route == f"{R}/snapshot"
