"""The command line's extensions against the real daemon: the near-duplicate policy on import,
and ``python -m same_search duplicates``."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon import Daemon
from images import encode, jpeg, picture

from same_search.cli import main
from same_search.contsign import ContSign


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("cli-ext"))
    d.start()
    yield d
    d.stop()


def run(daemon: Daemon, capsys, *argv: str) -> tuple[int, str, str]:
    flags = []
    for service in ("search", "feature", "admin"):
        flags += [f"--{service}-port", str(daemon.ports[service])]
    code = main([*argv, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder(root: Path, pictures: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in pictures.items():
        (root / name).write_bytes(data)
    return root


def test_import_counts_near_duplicates_apart(daemon, capsys, tmp_path):
    originals = folder(tmp_path / "originals", {"a.jpg": jpeg(1), "b.jpg": jpeg(2)})
    code, out, _ = run(daemon, capsys, "import", str(originals), "--appid", "imp", "--signup")
    assert code == 0 and "2 files: 2 added, 0 already stored, 0 failed" in out  # no policy: as before
    copies = folder(
        tmp_path / "copies",
        {"a_copy.jpg": encode(picture(1), quality=50), "b.jpg": jpeg(2), "c.jpg": jpeg(3)},
    )
    code, out, _ = run(daemon, capsys, "import", str(copies), "--appid", "imp", "--dup-policy", "reject")
    assert code == 0
    assert (
        "3 files: 1 added, 1 already stored, 1 near-duplicates not stored, 0 added with near-duplicates"
        in out
    )
    code, out, _ = run(daemon, capsys, "import", str(copies), "--appid", "imp", "--dup-policy", "warn")
    assert (
        "3 files: 1 added, 2 already stored, 0 near-duplicates not stored, 1 added with near-duplicates"
        in out
    )
    code, out, err = run(daemon, capsys, "import", str(copies), "--appid", "imp", "--dup-min-score", "7")
    assert code == 1 and "dup_min_score" in err


def test_duplicates_prints_the_groups_and_removes_extras(daemon, capsys, tmp_path):
    pictures = {
        "p1.jpg": jpeg(1),
        "p2.jpg": jpeg(2),
        "p1_copy.jpg": encode(picture(1), quality=50),
        "p1_small.jpg": encode(picture(1).resize((240, 180))),
        "p3.jpg": jpeg(3),
    }
    root = folder(tmp_path / "lib", pictures)
    assert run(daemon, capsys, "import", str(root), "--appid", "dups", "--signup", "-j", "1")[0] == 0
    code, out, err = run(daemon, capsys, "duplicates", "--appid", "dups")
    lines = out.splitlines()
    assert code == 0, err
    # The library's built-in floors: 0.6 for a pair the same-picture check confirms, as on add.
    assert lines[0] == "dups: 5 items scanned (exact, min_score 0.6): 1 groups, 2 extras"
    c = ContSign.of_image(jpeg(1))
    assert lines[1].split() == ["group", "1:", "keep", f"{c.sign1},{c.sign2}", "p1.jpg"]
    extras = [line.split() for line in lines[2:4]]
    assert sorted(e[2] for e in extras) == ["p1_copy.jpg", "p1_small.jpg"]
    assert all(float(e[0]) >= 0.95 for e in extras)
    code, out, _ = run(
        daemon, capsys, "duplicates", "--appid", "dups", "--min-score", "0.97", "--remove-extras"
    )
    assert code == 0 and "1 groups, 2 extras" in out and out.splitlines()[-1] == "removed 2 extras"
    code, out, _ = run(daemon, capsys, "duplicates", "--appid", "dups")
    assert "3 items scanned" in out and "0 groups, 0 extras" in out
    code, _, err = run(daemon, capsys, "duplicates", "--appid", "nobody")
    assert code == 1 and "103" in err
