"""``precision = "auto"`` on a CPU: time the arithmetic modes here, keep the fastest that keeps the vectors.

CPUs differ more than their names suggest: with AVX-512 BF16 or AMX, bf16 autocast runs a
forward pass about twice as fast as fp32; without them torch emulates bf16, about 20 times
slower (docs/benchmarks.md). Which is right is a fact of the machine and the model, so the
daemon measures it at start on a few pictures it draws itself (no files needed) and keeps a
mode only if every check picture's vector stays within :data:`COSINE_BAR` of fp32's: libraries
built on another machine, or before the choice changed, stay searchable. int8 is not a
candidate: post-training quantization moved Lite0's vectors to a cosine of 0.65-0.78
(docs/benchmarks.md), far outside the bar.

The check is bounded by a time budget and its outcome is cached per machine (CPU model and
flags, torch version, model fingerprint, threads and batch), so only the first start on a
machine pays for it. The fingerprint never depends on the mode: it describes what a vector
means, and the modes that pass the bar all produce the same meaning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from same_search.files import write_atomically

log = logging.getLogger(__name__)

#: Every check picture's vector must keep at least this cosine to its fp32 vector.
COSINE_BAR = 0.998
#: A mode other than fp32 must be at least this much faster, so timing noise cannot flip the choice.
MIN_SPEEDUP = 1.1
#: Timed forward passes per mode (after one untimed warm-up pass); the median counts.
REPEATS = 3
CHECK_PICTURES = 4
#: Bump when the check itself changes, so cached choices are measured again.
CACHE_VERSION = 2

#: What runs one forward pass: (mode, (N, 3, S, S) uint8 pixels) -> (N, dim) unit vectors.
Forward = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Trial:
    """One mode's measurement: median seconds per timed forward pass, worst cosine to fp32."""

    mode: str
    seconds: float
    min_cosine: float


@dataclass(frozen=True)
class PrecisionChoice:
    """The mode ``auto`` resolved to, why, and from where (measured now, cache, or no check)."""

    mode: str
    reason: str
    trials: tuple[Trial, ...] = ()
    source: str = "measured"
    measured_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict:
        """What the cache file stores."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PrecisionChoice:
        """Read back a cached choice (raises KeyError/TypeError/ValueError when malformed)."""
        trials = tuple(
            Trial(str(t["mode"]), float(t["seconds"]), float(t["min_cosine"])) for t in data["trials"]
        )
        return cls(str(data["mode"]), str(data["reason"]), trials, "cache", str(data["measured_at"]))


def decide(
    trials: Sequence[Trial], bar: float = COSINE_BAR, min_speedup: float = MIN_SPEEDUP
) -> PrecisionChoice:
    """The fastest trial whose vectors stay within ``bar`` of fp32 and that beats fp32 by
    ``min_speedup``; fp32 otherwise. ``trials`` must include fp32 (the reference)."""
    reference = next(t for t in trials if t.mode == "fp32")
    best, notes = reference, []
    for trial in trials:
        if trial.mode == "fp32":
            continue
        speedup = reference.seconds / trial.seconds if trial.seconds > 0 else float("inf")
        if trial.min_cosine < bar:
            notes.append(
                f"{trial.mode} {speedup:.2f}x fp32's speed but cosine {trial.min_cosine:.4f} < {bar}"
            )
        elif speedup < min_speedup:
            notes.append(f"{trial.mode} only {speedup:.2f}x fp32's speed (needs {min_speedup}x)")
        elif trial.seconds < best.seconds:
            best = trial
            notes.append(
                f"{trial.mode} {speedup:.2f}x fp32's speed, cosine to fp32 >= {trial.min_cosine:.4f}"
            )
        else:
            notes.append(f"{trial.mode} {speedup:.2f}x fp32's speed, slower than {best.mode}")
    timings = ", ".join(f"{t.mode} {t.seconds * 1000:.1f} ms" for t in trials)
    reason = "; ".join(notes) or "fp32 is the only candidate"
    return PrecisionChoice(best.mode, f"{reason} (median forward pass: {timings})", tuple(trials))


class CheckTooSlow(Exception):
    """The check would run past its time budget."""


def measure(
    forward: Forward,
    modes: Sequence[str],
    pixels: np.ndarray,
    budget_s: float,
    repeats: int = REPEATS,
    clock: Callable[[], float] | None = None,
    batch: int | None = None,
) -> list[Trial]:
    """Compare each mode's vectors with fp32's on all ``pixels``, then time it (``repeats``
    passes, interleaved so a drifting machine hurts all modes alike); :class:`CheckTooSlow`
    when the check would not fit ``budget_s``.

    The first fp32 pass tells the pace. Timing runs on ``batch`` pictures (the serving batch;
    all by default) when that fits the budget, else on one picture (a heavy model on one
    thread: ResNet-50 takes about a second per batch of four), and when even that would not
    fit nothing more runs.
    """
    clock = clock or time.perf_counter
    started = clock()
    reference = forward("fp32", pixels)  # warm-up, and the vectors to compare with
    first = clock() - started

    def estimate(timed: int) -> float:
        return first * len(modes) * (1 + repeats * timed / len(pixels))

    timed = pixels[: batch or len(pixels)]
    if estimate(len(timed)) > budget_s:
        timed = pixels[:1]
        if estimate(1) > budget_s:
            raise CheckTooSlow(f"one fp32 pass took {first:.2f}s, the check would take ~{estimate(1):.1f}s")
    cosines = {"fp32": 1.0}
    for mode in modes:
        if mode != "fp32":
            cosines[mode] = float((forward(mode, pixels) * reference).sum(axis=1).min())
            _check_budget(clock() - started, budget_s)
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            began = clock()
            forward(mode, timed)
            samples[mode].append(clock() - began)
            _check_budget(clock() - started, budget_s)
    return [Trial(mode, statistics.median(samples[mode]), cosines[mode]) for mode in modes]


def _check_budget(elapsed: float, budget_s: float) -> None:
    if elapsed > budget_s:
        raise CheckTooSlow(f"the check ran past its budget ({elapsed:.1f}s)")


def check_pictures(count: int, side: int) -> np.ndarray:
    """``count`` seeded pictures with the statistics of photos, (N, 3, side, side) uint8.

    Drawn in code so the check needs no files: colour texture whose amplitude spectrum falls
    as 1/f (as in natural images) under a few half-transparent shapes (objects with edges).
    Flat cartoon shapes alone are not like photos: bf16 moved their Lite0 vectors to a cosine of
    0.97 where real photos stayed above 0.998.
    """
    return np.stack([_check_picture(seed, side) for seed in range(count)])


def _check_picture(seed: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    amplitude = radius ** -(1.0 + 0.1 * seed)
    channels = [
        np.fft.irfft2(
            amplitude * rng.normal(size=amplitude.shape) * np.exp(2j * np.pi * rng.random(amplitude.shape)),
            s=(side, side),
        )
        for _ in range(3)
    ]
    mixed = np.tensordot(rng.normal(size=(3, 3)) + 2 * np.eye(3), np.stack(channels), 1)
    texture = np.clip(128 + 48 * (mixed - mixed.mean()) / mixed.std(), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(texture.transpose(1, 2, 0)))
    shapes = image.copy()
    draw = ImageDraw.Draw(shapes)
    picker = random.Random(seed)
    for _ in range(picker.randrange(3, 7)):
        x0, y0 = picker.randrange(side), picker.randrange(side)
        box = [
            x0,
            y0,
            x0 + picker.randrange(side // 8, side // 2),
            y0 + picker.randrange(side // 8, side // 2),
        ]
        colour = tuple(picker.randrange(256) for _ in range(3))
        (draw.rectangle if picker.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return np.array(Image.blend(image, shapes, 0.5), dtype=np.uint8).transpose(2, 0, 1)


def cpu_signature(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """CPU model name and flags: what decides which arithmetic is fast here."""
    model, flags = "", ""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    return {"cpu": model or platform.processor() or "unknown", "flags": flags}


def cache_key(fingerprint: str, threads: int, batch: int, modes: Sequence[str]) -> str:
    """One machine + model + plan, hashed: a change of any of them measures again."""
    facts = {
        "version": CACHE_VERSION,
        **cpu_signature(),
        "torch": torch.__version__,
        "fingerprint": fingerprint,
        "threads": threads,
        "batch": batch,
        "modes": list(modes),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/same_search/precision.json`` (``~/.cache`` when unset): the choice is a
    fact of the machine and the model, not of a data dir."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "same_search" / "precision.json"


class PrecisionCache:
    """Choices by cache key in one small JSON file, replaced atomically; never fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> PrecisionChoice | None:
        """The cached choice for ``key``, or None (also when the file is unreadable)."""
        entry = self._read().get(key)
        try:
            return PrecisionChoice.from_json(entry) if isinstance(entry, dict) else None
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, choice: PrecisionChoice) -> None:
        """Store ``choice``; a read-only or full disk only costs a warning."""
        data = self._read()
        data[key] = choice.to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("cannot cache the precision choice in %s: %s", self.path, exc)


def choose_precision(
    forward: Forward,
    *,
    fingerprint: str,
    threads: int,
    batch: int,
    side: int,
    budget_s: float,
    has_bf16: bool,
    cache: PrecisionCache | None,
    clock: Callable[[], float] | None = None,
) -> PrecisionChoice:
    """Resolve ``auto`` on a CPU: a cached choice, else a measurement, else fp32; logged with why.

    ``forward(mode, pixels)`` runs one forward pass; ``clock`` times them (tests inject both).
    """
    modes = ["fp32", "bf16"] if has_bf16 else ["fp32"]
    key = cache_key(fingerprint, threads, batch, modes)
    choice = cache.get(key) if cache is not None else None
    if choice is None:
        choice = _measure_choice(forward, modes, has_bf16, batch, side, budget_s, clock or time.perf_counter)
        if cache is not None and choice.source == "measured":
            cache.put(key, choice)
    where = (
        f" (cached {choice.measured_at} in {cache.path}; delete it to measure again)"
        if choice.source == "cache"
        else ""
    )
    log.info("precision auto -> %s: %s%s", choice.mode, choice.reason, where)
    return choice


def _measure_choice(
    forward: Forward,
    modes: list[str],
    has_bf16: bool,
    batch: int,
    side: int,
    budget_s: float,
    clock: Callable[[], float],
) -> PrecisionChoice:
    if not has_bf16:
        reason = "this CPU has no AVX-512 BF16 or AMX (bf16 would be emulated, ~20x slower); no check needed"
        return PrecisionChoice("fp32", reason, source="no check")
    if budget_s <= 0:
        return PrecisionChoice("fp32", "the check is off ([model] precision_check_s = 0)", source="no check")
    pixels = check_pictures(CHECK_PICTURES, side)  # every one must stay within the bar
    started = clock()
    try:
        trials = measure(forward, modes, pixels, budget_s, clock=clock, batch=min(batch, CHECK_PICTURES))
    except CheckTooSlow as exc:
        reason = f"check skipped, {exc} (budget [model] precision_check_s = {budget_s:g}s)"
        return PrecisionChoice("fp32", reason, source="no check")
    choice = decide(trials)
    took = f"; check took {clock() - started:.1f}s on {len(pixels)} built-in pictures"
    return PrecisionChoice(choice.mode, choice.reason + took, choice.trials, "measured", choice.measured_at)
