"""A process that has imported torch and the daemon's other heavy libraries, and forks daemons.

``python -m same_search`` spends about two CPU-seconds importing torch before it reads its
config, and the suite starts its daemons about eighty times: a third of a fresh clone's test
time on two cores went to importing the same modules again. tests/daemon.py starts this script
once per test worker; each daemon is then a fork of it that runs ``python -m same_search``'s
own ``__main__`` with the test's argv, environment, working directory and log file, so the
daemon's code, start-up and shutdown are the real ones; only the import of the libraries is
shared. The same ``same_search`` package is imported in the fork, not here: OpenCV starts a
thread when it is imported, and a fork of a process with such threads is not safe (faiss and
torch start none: they are imported here).

Protocol: one JSON request per line on stdin (``argv``, ``env``, ``cwd``, ``log``); one line
back on stdout with the daemon's pid. The daemon is forked twice so that it is not this
process's child: the test worker made itself a child subreaper (``PR_SET_CHILD_SUBREAPER``),
so the orphaned daemon becomes the worker's child, and the worker waits for it and reads its
exit status as it would a ``subprocess.Popen``'s.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import traceback

import aiohttp  # noqa: F401  (imported for the forks: that is this process's whole point)
import aiosqlite  # noqa: F401
import faiss  # noqa: F401  (0.2 CPU-s a start; it starts no thread when imported)
import google.protobuf  # noqa: F401
import hnswlib  # noqa: F401
import numpy  # noqa: F401
import PIL.Image  # noqa: F401
import torch
import torch.nn.functional  # noqa: F401


def run_daemon(request: dict) -> None:
    """In the forked daemon: ``python -m same_search`` with the request's argv, env and cwd."""
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]
    sys.argv = ["same_search", *request["argv"]]
    code: int | str | None = 0
    try:
        runpy.run_module("same_search", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    # What the interpreter does at exit: wait for non-daemon threads, run atexit, flush.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def fork_daemon(request: dict) -> int:
    """Fork twice; return the daemon's pid once its first parent is gone (it is orphaned)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        daemon = os.fork()
        if daemon == 0:
            os.close(write_end)
            try:
                run_daemon(request)
            finally:
                os._exit(1)
        os.write(write_end, str(daemon).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        pid = int(pipe.read())
    os.waitpid(middle, 0)  # from here on the daemon is the subreaper's child
    return pid


def main() -> None:
    for line in sys.stdin:
        pid = fork_daemon(json.loads(line))
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
