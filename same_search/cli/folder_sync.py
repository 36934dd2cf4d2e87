"""``same_search sync``: a library that follows a folder on a schedule (the management API's
``/api/libraries/{appid}/sync``): set, show, run now, stop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from same_search.cli.common import EXIT_FAILED, client_for
from same_search.cli.management import print_job, watch_job
from same_search.client_values import sync_result
from same_search.config import Config


def add_sync_command(commands: argparse._SubParsersAction, client: list) -> None:
    """The ``sync`` command and its actions."""
    sync = commands.add_parser(
        "sync", parents=client, help="make a library follow a folder on a schedule (show, set, run, stop)"
    )
    sync.description = (
        "A library can follow a folder on the daemon's host: every interval the daemon runs a sync "
        "job of it (new files added, changed ones replaced, moved ones followed; with "
        "--remove-missing, gone ones removed). The schedule survives restarts. Without an action, "
        "shows every schedule."
    )
    actions = sync.add_subparsers(dest="sync_command", metavar="ACTION")
    show = actions.add_parser("show", parents=client, help="one library's schedule, or every one")
    show.add_argument("--appid", help="library (default: every library that has a schedule)")
    put = actions.add_parser("set", parents=client, help="follow a folder, or change the schedule")
    put.add_argument("--appid", required=True, help="library")
    put.add_argument("--folder", required=True, help="folder on the daemon's host (made absolute here)")
    put.add_argument("--every", required=True, help='interval: seconds, or "15m", "6h", "1d" (at least 1m)')
    put.add_argument("--remove-missing", action="store_true", help="remove the items whose file is gone")
    put.add_argument(
        "--start-in", type=float, metavar="SECONDS", help="first run after so many seconds (default: at once)"
    )
    run = actions.add_parser("run", parents=client, help="sync now (the schedule's beat is kept)")
    run.add_argument("--appid", required=True, help="library")
    run.add_argument("--wait", action="store_true", help="show progress until the job ends")
    stop = actions.add_parser("stop", parents=client, help="stop following the folder")
    stop.add_argument("--appid", required=True, help="library")


def cmd_sync(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """``sync [show|set|run|stop]``."""
    client = client_for(cfg, token)
    action = args.sync_command or "show"
    if action == "set":
        start_at = None if args.start_in is None else time.time() + args.start_in
        folder = str(Path(args.folder).resolve())
        schedule = client.set_sync(
            args.appid, folder, args.every, remove_missing=args.remove_missing, start_at=start_at
        )
        print_schedule(schedule)
    elif action == "run":
        answer = client.run_sync(args.appid)
        job = answer["job"]
        print(f"job {job['id']} {'started' if answer['started'] else 'already ' + job['status']}")
        if args.wait:
            job = watch_job(client, client.job(job["id"]))
            print_job(job)
            return 0 if job["status"] == "done" else EXIT_FAILED
    elif action == "stop":
        removed = client.delete_sync(args.appid)
        print(f"{args.appid} {'no longer follows its folder' if removed else 'followed no folder'}")
    elif getattr(args, "appid", None):
        schedule = client.sync_schedule(args.appid)
        if schedule is None:
            print(f"{args.appid} follows no folder")
        else:
            print_schedule(schedule)
    else:
        schedules = client.sync_schedules()
        for schedule in schedules:
            print_schedule(schedule)
        if not schedules:
            print("no library follows a folder")
    return 0


def print_schedule(schedule: dict[str, Any]) -> None:
    """A schedule in three lines: what, when, and the last result."""
    removes = ", removing gone files' items" if schedule["remove_missing"] else ""
    print(f"{schedule['appid']}: follows {schedule['folder']} every {schedule['every']}{removes}")
    print(f"  last run {_when(schedule['last_run'])}, next run {_when(schedule['next_run'])}")
    print(f"  last result: {sync_result(schedule)}")


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
