"""Headless Chromium for the console's browser tests: where it is, how it is started, and the mark
that skips those tests (with how to get one) on a machine without it. `.ci/run` installs it."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium (.ci/run does it)"
)
#: Quiet, sandbox-free and offline: nothing but the pages under test is fetched.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
