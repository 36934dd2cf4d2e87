"""Images in, L2-normalised float32 vectors out. Knows nothing of HTTP, libraries or storage.

The descriptor is the last feature map of the network, globally pooled (GeM by default: it
weights strong local responses more than an average does, which suits retrieval), then
L2-normalised so that inner product equals cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from same_search.config import ModelConfig
from same_search.embed.models import LoadedModel, load_model

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


def cpu_threads(setting: int) -> int:
    """Threads for the forward pass on CPU: ``setting``, or (0) all cores but one.

    The spare core decodes the next images and runs the event loop. Measured on 2 cores: with
    torch's default (2 threads) a single search took 100 ms at p50; with 1 thread 47 ms, at
    the same throughput under load (docs/benchmarks.md).
    """
    if setting > 0:
        return setting
    return max(1, (os.cpu_count() or 1) - 1)


def pick_device(setting: str) -> torch.device:
    """``auto`` means the first GPU when torch sees one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Embedder:
    """A loaded network plus its preprocessing; call from worker threads, never the event loop."""

    def __init__(self, cfg: ModelConfig, loaded: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self.model = loaded or load_model(cfg)
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.threads))
        self.network = self.model.network.to(self.device).eval()
        if self.device.type == "cpu":
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
        log.info(
            "embedder ready: model=%s dim=%d device=%s weights=%s fingerprint=%s",
            self.info.model_id,
            self.info.dim,
            self.info.device,
            self.info.weights_source,
            self.info.fingerprint,
        )

    def _fingerprint(self) -> str:
        """Everything that decides what a vector means, hashed: model, weights, preprocessing."""
        recipe = {
            "pipeline": PIPELINE_VERSION,
            "model": self.model.model_id,
            "weights": self.model.weights_sha256,
            "size": self.cfg.image_size,
            "mean": self.model.mean,
            "std": self.model.std,
            "pooling": self.cfg.pooling,
            "gem_p": self.cfg.gem_p if self.cfg.pooling == "gem" else None,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

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
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) uint8 -> (N, dim) float32 unit vectors."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        features = self.network(x)
        pooled = self._pool(features.float())
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "avg":
            return features.mean(dim=(2, 3))
        p = self.cfg.gem_p
        return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
