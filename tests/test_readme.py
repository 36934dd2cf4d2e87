"""The README's walk-through holds on a fresh clone and on any port: it opens with the two
commands, ``make run ARGS=...`` reaches the daemon's flags, the sample-client steps copy nothing into
the checkout, and every client command it names exists. No daemon needed: this reads the files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from same_search.cli.main import COMMANDS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_opens_with_make_run_and_make_test() -> None:
    opening = README.split("```")[1].splitlines()
    assert [line.split("#")[0].strip() for line in opening if line.strip()][1:] == ["make run", "make test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_args_to_the_daemon() -> None:
    flags = "--search-port 9025 --admin-port 9103"
    dry = subprocess.run(
        ["make", "-n", "run", f"ARGS={flags}"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert dry.returncode == 0, dry.stderr
    assert any("-m same_search" in line and line.endswith(flags) for line in dry.stdout.splitlines())
    assert "make run ARGS=" in README


def test_walk_through_copies_nothing_and_names_real_commands() -> None:
    shell = "\n".join(README.split("```")[1::2])
    assert not re.search(r"^\s*cp\s", shell, re.MULTILINE)
    assert "AS_SERVER" in README
    named = re.findall(r"python -m same_search ([a-z][a-z-]+)", README)
    assert "jobs" in named and "COMMAND" in README
    for command in named:
        assert command in COMMANDS, command
