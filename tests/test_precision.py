"""precision = "auto" on a CPU: the choice, its time bound, its cache and its log line.

The decision and the check run with injected forward passes and clocks (so drift and speed are
whatever a test needs), then once for real on this machine, then in the real daemon twice over
one cache file.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from daemon import Daemon

from same_search.config import ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.precision import (
    CheckTooSlow,
    PrecisionCache,
    Trial,
    check_pictures,
    choose_precision,
    decide,
    measure,
)

DIM = 16


class FakeForward:
    """Forward passes whose bf16 vectors are fp32's turned by a chosen angle, timed by a fake clock."""

    def __init__(self, seconds: dict[str, float], bf16_cosine: float = 1.0) -> None:
        self.seconds = seconds
        self.bf16_cosine = bf16_cosine
        self.now = 0.0
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, mode: str, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(mode)
        self.now += self.seconds[mode] * len(pixels) / 4  # seconds are per batch of four
        count = len(pixels)
        base = np.zeros((count, DIM), dtype=np.float32)
        base[:, 0] = 1.0
        if mode == "bf16":
            angle = np.arccos(self.bf16_cosine)
            base[:, 0], base[:, 1] = np.cos(angle), np.sin(angle)
        return base


def choose(fake: FakeForward, cache: PrecisionCache | None = None, **overrides):
    arguments = dict(
        fingerprint="f" * 16,
        threads=1,
        batch=4,
        side=32,
        budget_s=5.0,
        has_bf16=True,
        cache=cache,
        clock=fake.clock,
    )
    arguments.update(overrides)
    return choose_precision(fake, **arguments)


def test_decide_keeps_fp32_when_bf16_drifts():
    choice = decide([Trial("fp32", 0.10, 1.0), Trial("bf16", 0.05, 0.9970)])
    assert choice.mode == "fp32"
    assert "bf16 2.00x fp32's speed but cosine 0.9970 < 0.998" in choice.reason


@pytest.mark.parametrize("bf16_seconds", [0.12, 0.095])
def test_decide_keeps_fp32_when_bf16_is_slower_or_barely_faster(bf16_seconds):
    choice = decide([Trial("fp32", 0.10, 1.0), Trial("bf16", bf16_seconds, 0.9999)])
    assert choice.mode == "fp32" and "needs 1.1x" in choice.reason


def test_decide_picks_bf16_when_faster_and_within_the_bar():
    choice = decide([Trial("fp32", 0.10, 1.0), Trial("bf16", 0.05, 0.9985)])
    assert choice.mode == "bf16"
    assert "bf16 2.00x fp32's speed, cosine to fp32 >= 0.9985" in choice.reason
    assert "fp32 100.0 ms, bf16 50.0 ms" in choice.reason


def test_measure_interleaves_modes_and_reports_medians_and_worst_cosine():
    fake = FakeForward({"fp32": 0.1, "bf16": 0.04}, bf16_cosine=0.999)
    trials = measure(fake, ["fp32", "bf16"], np.zeros((4, 3, 8, 8), np.uint8), 5.0, clock=fake.clock)
    assert fake.calls == ["fp32", "bf16", "fp32", "bf16", "fp32", "bf16", "fp32", "bf16"]
    by_mode = {trial.mode: trial for trial in trials}
    assert by_mode["fp32"].seconds == pytest.approx(0.1) and by_mode["bf16"].seconds == pytest.approx(0.04)
    assert by_mode["bf16"].min_cosine == pytest.approx(0.999, abs=1e-6)


def test_measure_stops_when_the_first_pass_shows_the_budget_is_too_small():
    fake = FakeForward({"fp32": 2.0, "bf16": 1.0})
    with pytest.raises(CheckTooSlow, match=r"would take ~7\.0s"):
        measure(fake, ["fp32", "bf16"], np.zeros((4, 3, 8, 8), np.uint8), 5.0, clock=fake.clock)
    assert fake.calls == ["fp32"]


def test_the_vectors_of_all_pictures_are_checked_and_the_serving_batch_is_timed():
    fake = FakeForward({"fp32": 0.1, "bf16": 0.04})
    measure(fake, ["fp32", "bf16"], np.zeros((4, 3, 8, 8), np.uint8), 5.0, clock=fake.clock, batch=1)
    assert fake.now == pytest.approx(0.1 + 0.04 + 3 * (0.1 + 0.04) / 4)


def test_a_heavy_model_is_timed_on_one_picture_to_fit_the_budget():
    """ResNet-50 on one thread: ~1 s per batch of four; the whole-batch timing would take 8 s."""
    fake = FakeForward({"fp32": 1.0, "bf16": 0.5}, bf16_cosine=0.999)
    trials = measure(fake, ["fp32", "bf16"], np.zeros((4, 3, 8, 8), np.uint8), 5.0, clock=fake.clock)
    assert fake.now <= 5.0
    by_mode = {trial.mode: trial for trial in trials}
    assert by_mode["fp32"].seconds == pytest.approx(0.25) and by_mode["bf16"].seconds == pytest.approx(0.125)
    assert decide(trials).mode == "bf16"


def test_measure_stops_when_a_slow_mode_runs_past_the_budget():
    fake = FakeForward({"fp32": 0.1, "bf16": 4.0})  # emulated bf16: 40x slower
    with pytest.raises(CheckTooSlow, match="ran past its budget"):
        measure(fake, ["fp32", "bf16"], np.zeros((4, 3, 8, 8), np.uint8), 3.0, clock=fake.clock)
    assert len(fake.calls) <= 3


def test_a_too_slow_check_picks_fp32_and_says_so(caplog):
    fake = FakeForward({"fp32": 30.0, "bf16": 10.0})
    with caplog.at_level(logging.INFO, logger="same_search.embed.precision"):
        choice = choose(fake)
    assert choice.mode == "fp32" and choice.source == "no check"
    assert "precision auto -> fp32: check skipped, one fp32 pass took 30.00s" in caplog.text


def test_no_native_bf16_or_no_budget_means_fp32_without_running_anything(caplog):
    fake = FakeForward({"fp32": 0.1, "bf16": 0.05})
    with caplog.at_level(logging.INFO, logger="same_search.embed.precision"):
        assert choose(fake, has_bf16=False).mode == "fp32"
        assert choose(fake, budget_s=0).mode == "fp32"
    assert fake.calls == []
    assert "no AVX-512 BF16 or AMX" in caplog.text and "precision_check_s = 0" in caplog.text


def test_the_second_start_uses_the_cache_and_the_log_says_why(tmp_path, caplog):
    cache = PrecisionCache(tmp_path / "precision.json")
    fake = FakeForward({"fp32": 0.1, "bf16": 0.04}, bf16_cosine=0.9995)
    with caplog.at_level(logging.INFO, logger="same_search.embed.precision"):
        first = choose(fake, cache)
        measured_calls = len(fake.calls)
        second = choose(fake, cache)
    assert (first.mode, first.source, second.mode, second.source) == ("bf16", "measured", "bf16", "cache")
    assert len(fake.calls) == measured_calls > 0  # the second start ran no forward pass
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert lines[0].startswith("precision auto -> bf16: bf16 2.50x fp32's speed, cosine to fp32 >= 0.9995")
    assert "fp32 100.0 ms, bf16 40.0 ms" in lines[0]
    assert "cached" in lines[1] and str(cache.path) in lines[1]
    # Another model (fingerprint) or plan on the same machine measures again.
    assert choose(fake, cache, fingerprint="0" * 16).source == "measured"
    assert choose(fake, cache, threads=2).source == "measured"
    assert len(json.loads(cache.path.read_text())) == 3


def test_a_corrupt_or_unwritable_cache_only_costs_a_measurement(tmp_path):
    path = tmp_path / "precision.json"
    path.write_text("{not json")
    fake = FakeForward({"fp32": 0.1, "bf16": 0.04})
    assert choose(fake, PrecisionCache(path)).source == "measured"
    assert len(json.loads(path.read_text())) == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert choose(fake, PrecisionCache(blocked / "precision.json")).mode == "bf16"


def test_check_pictures_are_built_in_deterministic_and_varied():
    pictures = check_pictures(4, 64)
    assert pictures.shape == (4, 3, 64, 64) and pictures.dtype == np.uint8
    assert np.array_equal(pictures, check_pictures(4, 64))
    assert all(pictures[i].std() > 20 for i in range(4))
    assert not np.array_equal(pictures[0], pictures[1])


def test_auto_on_this_machine_picks_a_valid_mode_quickly_and_keeps_the_fingerprint(embedder, tmp_path):
    """The real check, once: whatever this CPU says, the mode is valid, the time bounded, the
    vectors comparable (same fingerprint), and a second embedder reads the cache."""
    cfg = ModelConfig(name="efficientnet_lite0", precision_cache=str(tmp_path / "precision.json"))
    started = time.perf_counter()
    auto = Embedder(cfg, loaded=embedder.model)
    took = time.perf_counter() - started
    choice = auto.precision_choice
    assert choice is not None and choice.mode in ("fp32", "bf16") and auto.plan.precision == choice.mode
    assert took < cfg.precision_check_s + 5.0, took  # budget, plus at most one pass past it
    assert auto.info.fingerprint == embedder.info.fingerprint
    if choice.source == "measured":
        assert {t.mode for t in choice.trials} >= {"fp32"}
    batch = check_pictures(2, 224)
    cosines = (auto.embed(batch) * embedder.embed(batch)).sum(axis=1)
    assert cosines.min() > 0.99
    again = Embedder(cfg, loaded=embedder.model)
    assert again.plan.precision == choice.mode
    assert again.precision_choice.source == ("cache" if choice.source == "measured" else choice.source)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_explicit_precision_is_honoured_without_a_check(embedder, tmp_path, mode):
    cache = tmp_path / "precision.json"
    chosen = Embedder(
        ModelConfig(name="efficientnet_lite0", precision=mode, precision_cache=str(cache)),
        loaded=embedder.model,
    )
    assert chosen.plan.precision == mode and chosen.precision_choice is None and not cache.exists()
    assert chosen.info.fingerprint == embedder.info.fingerprint


@pytest.mark.heavy
def test_the_daemon_measures_once_then_reads_the_cache(tmp_path):
    cache = tmp_path / "precision.json"
    daemon = Daemon(tmp_path, f'[model]\nname = "efficientnet_lite0"\nprecision_cache = "{cache}"\n')
    daemon.start()
    daemon.terminate()
    daemon.start()
    try:
        lines = [line for line in daemon.log.read_text().splitlines() if "precision auto ->" in line]
        assert len(lines) == 2, lines
        assert "cached" not in lines[0]
        # A check that ran is cached; one skipped for its time budget (a loaded machine: one pass
        # took too long) or not needed (no bf16) leaves nothing to cache: the next start decides afresh.
        assert ("cached" in lines[1]) == ("check took" in lines[0]), lines
        mode = lines[0].split("precision auto -> ")[1].split(":")[0]
        assert mode in ("fp32", "bf16") and f"precision={mode}" in daemon.log.read_text()
    finally:
        daemon.terminate()
