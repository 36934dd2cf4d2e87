"""Images in, L2-normalised float32 vectors out. Knows nothing of HTTP, libraries or storage.

The descriptor is the last feature map of the network, globally pooled (average by default,
chosen by measurement over GeM: docs/quality.md), then L2-normalised so that inner product equals
cosine similarity.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from same_search.config import ConfigError, ModelConfig
from same_search.cpu import has_bf16
from same_search.embed.models import LoadedModel, load_model
from same_search.embed.precision import PrecisionCache, PrecisionChoice, choose_precision, default_cache_path

log = logging.getLogger(__name__)

#: Bump when preprocessing or pooling changes in a way the config does not show, so old
#: libraries are refused instead of being mixed with incompatible vectors.
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a library records about the vectors it holds."""

    model_id: str
    dim: int
    fingerprint: str
    device: str
    weights_source: str


@dataclass(frozen=True)
class ExecutionPlan:
    """How many forward passes run at once, with how many torch threads, on batches of what size."""

    workers: int
    threads: int
    max_batch: int
    precision: str = "fp32"
    #: Threads decoding and resizing pictures ahead of the forward passes.
    decode_threads: int = 2


def plan_execution(cfg: ModelConfig, device: torch.device, cores: int | None = None) -> ExecutionPlan:
    """Resolve the ``0 = auto`` settings of ``[model]`` for this machine's ``cores`` (the CPUs
    this process may run on, see :func:`available_cores`).

    On a CPU, several single-threaded forward passes beat one multi-threaded pass, and small
    batches beat large ones, both in throughput and in single-search latency (docs/benchmarks.md,
    "execution plan (auto)"). A GPU wants one worker feeding it large batches.
    """
    cores = cores or available_cores()
    precision = resolve_precision(cfg.precision, device)
    decoders = max(2, cores)  # a GPU forward pass outruns one decoding thread by far (docs/benchmarks.md)
    if device.type == "cpu":
        workers = cfg.workers or cores
        threads = cfg.threads or (1 if workers > 1 else max(1, cores - 1))
        return ExecutionPlan(workers, threads, cfg.max_batch or 4, precision, decoders)
    batch = cfg.max_batch or gpu_batch(device)
    return ExecutionPlan(cfg.workers or 1, cfg.threads or 1, batch, precision, decoders)


def available_cores() -> int:
    """CPUs this process may run on: ``taskset``/cgroup cpusets count, the machine's total does not."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a GPU runs: powers of two below ``max_batch``, and ``max_batch``.

    cuDNN picks (and may compile) kernels per input shape, which took seconds per new batch size
    on an H200 and stalled requests for that long; padding every batch up to one of these few
    sizes, all warmed up at start, keeps that off the request path.
    """
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def gpu_batch(device: torch.device) -> int:
    """Auto batch on a GPU: 64 on cards of 16 GiB or more, else 32.

    A 224 px batch of 64 needs well under 2 GiB of activations in fp16 for ResNet-50; the cap is
    about latency (a batch waits for its slowest decode), not memory.
    """
    try:
        total = torch.cuda.get_device_properties(device).total_memory
    except (AssertionError, RuntimeError):  # no CUDA here: planning for a described device
        return 32
    return 64 if total >= 16 << 30 else 32


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto`` -> fp16 on a GPU, fp32 on a CPU; refuse fp16 on a CPU (no fast kernels there).

    This is the static answer; :class:`Embedder` then measures ``auto`` on a CPU
    (:mod:`same_search.embed.precision`), which may turn it into bf16.

    bf16 on a CPU is allowed but warned about when the CPU lacks bf16 instructions: autocast then
    emulates it, many times slower than fp32 (docs/benchmarks.md, "arithmetic modes").
    """
    if setting == "auto":
        return "fp32" if device.type == "cpu" else "fp16"
    if setting == "fp16" and device.type == "cpu":
        raise ConfigError('[model] precision = "fp16" needs a GPU; use "fp32" (or "bf16") on a CPU')
    if setting == "bf16" and device.type == "cpu" and not has_bf16():
        log.warning("precision bf16 on a CPU without AVX-512 BF16/AMX: expect it to be much slower than fp32")
    return setting


def pick_device(setting: str) -> torch.device:
    """``auto`` means the first GPU when torch sees one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ConfigError(f"[model] device {setting!r} is not a device name: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f'[model] device = "{setting}" but torch sees no CUDA GPU; use "auto" or "cpu"')
    return device


def model_fingerprint(cfg: ModelConfig, model: LoadedModel) -> str:
    """Everything that decides what a vector means, hashed: model, weights, preprocessing
    (resolution, normalisation), pooling. Two settings with one fingerprint make comparable
    vectors; anything else is another model (device, precision and batching are not in it)."""
    recipe = {
        "pipeline": PIPELINE_VERSION,
        "model": model.model_id,
        "weights": model.weights_sha256,
        "size": cfg.image_size,
        "mean": model.mean,
        "std": model.std,
        "pooling": cfg.pooling,
        "gem_p": cfg.gem_p if cfg.pooling == "gem" else None,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class Embedder:
    """A loaded network plus its preprocessing; call from worker threads, never the event loop."""

    def __init__(self, cfg: ModelConfig, loaded: LoadedModel | None = None) -> None:
        """Load (or take) the network and plan its execution; ``precision = "auto"`` on a CPU
        is measured here (a few seconds at most, or a cache hit)."""
        self.cfg = cfg
        self.model = loaded or load_model(cfg)
        self.device = pick_device(cfg.device)
        self.plan = plan_execution(cfg, self.device)
        self._buckets = batch_buckets(self.plan.max_batch)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are few (the buckets) and warmed up
        if self.device.type == "cpu":
            torch.set_num_threads(self.plan.threads)
        self.network = self.model.network.to(self.device).eval()
        self.network = self.network.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(self.model.mean).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(self.model.std).view(1, 3, 1, 1).to(self.device)
        self.info = ModelInfo(
            model_id=self.model.model_id,
            dim=self.model.dim,
            fingerprint=self._fingerprint(),
            device=str(self.device),
            weights_source=self.model.weights_source,
        )
        self.precision_choice: PrecisionChoice | None = None
        if cfg.precision == "auto" and self.device.type == "cpu":
            self.precision_choice = self._choose_precision()
            self.plan = replace(self.plan, precision=self.precision_choice.mode)
        log.info(
            "embedder ready: model=%s dim=%d device=%s precision=%s weights=%s fingerprint=%s "
            "workers=%d threads=%d max_batch=%d",
            self.info.model_id,
            self.info.dim,
            self.info.device,
            self.plan.precision,
            self.info.weights_source,
            self.info.fingerprint,
            self.plan.workers,
            self.plan.threads,
            self.plan.max_batch,
        )

    def _choose_precision(self) -> PrecisionChoice:
        """Measure fp32 against bf16 on this CPU (see :mod:`same_search.embed.precision`)."""
        cache_path = Path(self.cfg.precision_cache) if self.cfg.precision_cache else default_cache_path()
        return choose_precision(
            lambda mode, pixels: self.embed(pixels, precision=mode),
            fingerprint=self.info.fingerprint,
            threads=self.plan.threads,
            batch=self.plan.max_batch,
            side=self.cfg.image_size,
            budget_s=self.cfg.precision_check_s,
            has_bf16=has_bf16(),
            cache=PrecisionCache(cache_path),
        )

    def _fingerprint(self) -> str:
        return model_fingerprint(self.cfg, self.model)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB picture -> (3, S, S) uint8 array: the whole picture resized, aspect not kept.

        Squashing instead of centre-cropping keeps every pixel in view, so an edited copy with
        borders or a crop still shares most of its content with the original, and every image
        has the same shape so requests batch together.
        """
        size = self.cfg.image_size
        resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.array(resized, dtype=np.uint8).transpose(2, 0, 1)

    @torch.inference_mode()
    def embed(self, batch: np.ndarray, precision: str | None = None) -> np.ndarray:
        """(N, 3, S, S) uint8 -> (N, dim) float32 unit vectors, in the plan's precision unless
        ``precision`` names another (the precision check compares them).

        Pixels travel to a GPU as uint8 (4x less than floats) from pinned memory, so the copy
        overlaps; scaling, the forward pass in the plan's precision, pooling and normalisation
        all run on the device. Pooling and normalisation are always fp32.
        """
        pixels = torch.from_numpy(batch)
        if self.device.type == "cuda":
            pixels = self._pad_to_bucket(pixels).pin_memory()
        return self._forward(pixels, len(batch), precision)

    @torch.inference_mode()
    def embed_tensor(self, pixels: torch.Tensor, precision: str | None = None) -> np.ndarray:
        """Like :meth:`embed` for (N, 3, S, S) uint8 pixels already in a tensor, on the CPU or
        already on the device (pictures decoded by nvJPEG)."""
        count = len(pixels)
        if self.device.type == "cuda":
            pixels = self._pad_to_bucket(pixels)
        return self._forward(pixels, count, precision)

    def _forward(self, pixels: torch.Tensor, count: int, precision: str | None) -> np.ndarray:
        x = pixels.to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        with self._autocast(precision or self.plan.precision):
            features = self.network(x)
        pooled = self._pool(features[:count].float())
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)

    def _pad_to_bucket(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` with black pictures appended up to the next of :func:`batch_buckets`."""
        size = next((b for b in self._buckets if b >= len(pixels)), len(pixels))
        if size == len(pixels):
            return pixels
        padding = pixels.new_zeros((size - len(pixels), *pixels.shape[1:]))
        return torch.cat([pixels, padding])

    def warm_up(self) -> float:
        """Run every batch shape once before serving; returns the seconds it took.

        On a GPU that is each bucket size (kernel selection and CUDA start-up happen here, not
        in the first requests); on a CPU one batch of one, which loads the kernels the same way.
        """
        started = time.perf_counter()
        side = self.cfg.image_size
        sizes = self._buckets if self.device.type == "cuda" else [1]
        for size in sizes:
            self.embed(np.zeros((size, 3, side, side), dtype=np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        log.info("embedder warmed up in %.1fs (batch sizes %s)", seconds, ",".join(map(str, sizes)))
        return seconds

    def _autocast(self, precision: str) -> contextlib.AbstractContextManager:
        """Autocast for fp16/bf16: one code path for both (bf16 is exercised by CPU tests), and
        the shared fp32 network is never converted in place."""
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "avg":
            return features.mean(dim=(2, 3))
        p = self.cfg.gem_p
        return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
