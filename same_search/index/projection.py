"""A library's learned reduction: mean-centred PCA from its own stored vectors.

Large libraries search a graph of reduced vectors (docs/quality.md: 256 dimensions keep P@10
and near-duplicate recall) and re-rank with the native ones, so the reduction only has to keep
the right items among the candidates. It is learned once, from a sample of the library, and
stored in SQLite with the library (tied to the model fingerprint, with its own fingerprint), so
a restart loads it instead of learning it again, and a graph snapshot built with another
projection is recognised and rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Vectors a projection is learned from at most (a covariance over more adds nothing measurable).
SAMPLE_MAX = 50_000


@dataclass(frozen=True)
class Projection:
    """x -> normalise((x - mean) @ components)."""

    mean: np.ndarray  # (native_dim,) float32
    components: np.ndarray  # (native_dim, dim) float32
    model_fingerprint: str
    fingerprint: str

    @property
    def native_dim(self) -> int:
        """Dimension of the vectors it takes."""
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        """Dimension of the vectors it gives."""
        return int(self.components.shape[1])

    @classmethod
    def learn(cls, sample: np.ndarray, dim: int, model_fingerprint: str) -> Projection:
        """The top ``dim`` principal axes of ``sample`` (n x native_dim unit vectors).

        Eigenvectors of the covariance, not an SVD of the sample: the covariance is
        native_dim^2 whatever the sample size, and its eigendecomposition takes a second.
        """
        sample = np.asarray(sample, np.float64)
        native_dim = sample.shape[1]
        dim = max(1, min(dim, native_dim))
        mean = sample.mean(axis=0)
        centred = sample - mean
        covariance = centred.T @ centred / max(len(sample) - 1, 1)
        values, vectors = np.linalg.eigh(covariance)
        order = np.argsort(-values, kind="stable")[:dim]
        components = vectors[:, order]
        # An eigenvector's sign is arbitrary: fix it so the same sample gives the same projection.
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dim)])
        components = components * np.where(signs == 0, 1.0, signs)
        return cls.of(mean.astype(np.float32), components.astype(np.float32), model_fingerprint)

    @classmethod
    def of(cls, mean: np.ndarray, components: np.ndarray, model_fingerprint: str) -> Projection:
        """A projection with its fingerprint computed from its parts."""
        mean = np.ascontiguousarray(mean, np.float32)
        components = np.ascontiguousarray(components, np.float32)
        digest = hashlib.sha256()
        digest.update(model_fingerprint.encode())
        digest.update(np.array(components.shape, np.int64).tobytes())
        digest.update(mean.astype("<f4").tobytes())
        digest.update(components.astype("<f4").tobytes())
        return cls(mean, components, model_fingerprint, digest.hexdigest()[:32])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Reduced, L2-normalised float32 rows (a vector at the mean maps to zeros)."""
        x = np.asarray(vectors, np.float32).reshape(-1, self.native_dim)
        out = (x - self.mean) @ self.components
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 1e-12, norms, 1.0)
        return np.ascontiguousarray(out, np.float32)

    # ---- storage -----------------------------------------------------------------------------

    def to_blobs(self) -> tuple[bytes, bytes]:
        """(mean, components) as little-endian float32 bytes."""
        return self.mean.astype("<f4").tobytes(), self.components.astype("<f4").tobytes()

    @classmethod
    def from_blobs(
        cls,
        mean: bytes,
        components: bytes,
        native_dim: int,
        dim: int,
        model_fingerprint: str,
        fingerprint: str,
    ) -> Projection:
        """Rebuild a stored projection; a fingerprint that does not match its parts raises ValueError."""
        restored = cls.of(
            np.frombuffer(mean, "<f4").reshape(native_dim),
            np.frombuffer(components, "<f4").reshape(native_dim, dim),
            model_fingerprint,
        )
        if restored.fingerprint != fingerprint:
            raise ValueError(f"stored projection {fingerprint} reads back as {restored.fingerprint}")
        return restored
