"""Configuration: the shipped file equals the defaults, typos are caught, flags override."""

from __future__ import annotations

from pathlib import Path

import pytest

from same_search.cli import build_config, parse_args
from same_search.config import Config, ConfigError, from_mapping, load

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_the_defaults_and_fully_commented():
    assert load(REPO / "config.toml") == Config()
    lines = (REPO / "config.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"config.toml key without a comment: {line}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sever": {}}, "unknown section"),
        ({"server": {"prot": 1}}, "unknown key"),
        ({"server": {"feature_port": "8120"}}, "must be int"),
        ({"index": {"m": True}}, "must be int"),
        ({"index": {"reduce_dim": 0}}, "reduce_dim must be at least 1"),
        ({"index": {"rerank_candidates": -5}}, "rerank_candidates must be at least 1"),
        ({"index": {"reduced_ef_search": 0}}, "reduced_ef_search must be at least 1"),
        ({"index": {"recall_sample": 0}}, "recall_sample must be at least 1"),
        ({"index": {"new_vector_scan": -1}}, "new_vector_scan must be 0 or more"),
        ({"server": 3}, "must be a table"),
        ({"storage": {"backend": "mongo"}}, 'backend must be "local" or "milvus"'),
        ({"storage": {"backend": "milvus"}}, "needs uri"),
    ],
)
def test_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(data)


def test_ints_are_accepted_for_floats():
    assert from_mapping({"storage": {"snapshot_interval_s": 5}}).storage.snapshot_interval_s == 5.0


def test_cli_flags_override_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\nsearch_port = 9000\n[storage]\ndata_dir = "/x"\n')
    cfg = build_config(parse_args(["--config", str(path), "--search-port", "9100", "--data-dir", "/y"]))
    assert cfg.server.host == "0.0.0.0" and cfg.server.search_port == 9100 and cfg.storage.data_dir == "/y"
    assert cfg.server.feature_port == 8120


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "none.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)
