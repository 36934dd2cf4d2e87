"""The threads that work on pictures run nicer than the ones that answer (embed/priority.py).

A search by contsign needs only the event loop and the index thread; the forward passes of
clients adding pictures must not take the CPU from it. Linux only (thread ids)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from conftest import b64, brief
from images import jpeg

from same_search.priority import HEAVY_NICENESS, PICTURE_NICENESS, nicer_by

R = "/RTSAsService"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread niceness is Linux's")


def niceness(thread: threading.Thread) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)


@pytest.mark.local_only
async def test_picture_threads_run_nicer_than_the_event_loop_and_the_index_thread(api):
    assert (await api(f"{R}/signup", appid="nice"))["err_no"] == 0
    added = await api(f"{R}/add", appid="nice", image=b64(jpeg(1)), features=[brief("one")])
    assert added["err_no"] == 0
    assert (await api(f"{R}/search", appid="nice", image=b64(jpeg(1)), rn=5))["err_no"] == 0
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # the event loop's
    threads = {t.name: t for t in threading.enumerate()}
    pictures = [t for name, t in threads.items() if name.split("_")[0] in ("infer", "decode", "verify")]
    answering = [t for name, t in threads.items() if name.split("_")[0] == "index"]
    assert {name.split("_")[0] for name in threads} >= {"infer", "decode", "verify", "index"}
    assert all(niceness(t) == min(19, base + PICTURE_NICENESS) for t in pictures), [
        (t.name, niceness(t)) for t in pictures
    ]
    assert all(niceness(t) == base for t in answering)


def test_a_nicer_thread_is_nicer_by_the_amount_and_never_past_19():
    seen: list[int] = []

    def run(niceness_: int) -> None:
        nicer_by(niceness_)()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for amount in (HEAVY_NICENESS, 40):
        thread = threading.Thread(target=run, args=(amount,))
        thread.start()
        thread.join()
    assert seen == [min(19, base + HEAVY_NICENESS), 19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's own is kept
