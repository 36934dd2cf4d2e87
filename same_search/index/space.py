"""A library's learned space: the space its searches rank and score in, fitted on its own items.

Native cosine ranks every library until its operator moves it (``PUT
/api/libraries/{appid}/space``); a moved library ranks in a centred PCA of its own stored
vectors (:class:`~same_search.index.projection.Projection`), blended with the native cosine:
the score is ``(1 - weight) x native cosine + weight x learned cosine``. That is itself a
cosine, of each native vector and its projection side by side, scaled by ``sqrt(1 - weight)``
and ``sqrt(weight)``: both halves are unit vectors, so the joined vector is one too, and an
index over joined vectors answers in descending score with 1.0 for the same picture, as the
spec promises. ``weight`` 1 is the learned cosine alone.

Why the blend and these numbers: docs/quality.md, "A library's learned space"
(``make eval-learned-space``): the learned cosine alone gains category precision but costs an
edited copy its place in the ranking; the blend keeps near-duplicates whole.

The space is fitted once the library holds ``[index] space_min_items`` items and fitted again when it has
grown by :data:`REFIT_GROWTH` since; a smaller library keeps native cosine (it says so in its
stats). The fitted space is stored with the library (table ``learned_spaces``) and travels in an
export, so an import ranks identically.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np

from same_search.index.projection import Projection
from same_search.verify import decision

NATIVE, LEARNED = "native", "learned"
SPACES = (NATIVE, LEARNED)
#: The space is fitted again when the library has grown by this factor since the last fit.
REFIT_GROWTH = 2.0
#: Dimensions of the learned part, and its share of the score: of the spaces measured, the one
#: that keeps nearly all of the category gain of PCA 96 alone at half its near-duplicate cost.
DIM = 96
WEIGHT = 0.5


@dataclass(frozen=True)
class LearnedFloors:
    """The decision's score floors refitted for the learned space (docs/quality.md)."""

    reach: float = decision.REACH
    weak: float = decision.WEAK_SCORE
    verified: float = decision.VERIFIED_MIN_SCORE
    fallback: float = decision.FALLBACK_SCORE


#: Refitted on the same-picture protocol for the default space (bench/eval_learned_space.py):
#: each native floor moved to the score above which the same share of wrong candidates lies,
#: REACH to the lowest score of a copy the rule confirmed less the native margin.
FLOORS = LearnedFloors(reach=0.25, weak=0.859, verified=0.665, fallback=0.966)


@dataclass(frozen=True)
class LearnedSpace:
    """A fitted space: native unit vectors in, joined unit vectors out."""

    projection: Projection
    weight: float
    items: int
    fitted_at: float

    @classmethod
    def fit(
        cls, sample: np.ndarray, items: int, model_fingerprint: str, dim: int = DIM, weight: float = WEIGHT
    ) -> LearnedSpace:
        """The space of a library of ``items`` items, fitted on ``sample`` of its vectors."""
        return cls(Projection.learn(sample, dim, model_fingerprint), weight, items, time.time())

    @property
    def native_dim(self) -> int:
        return self.projection.native_dim

    @property
    def dim(self) -> int:
        """Dimension of the joined vectors an index of this space holds."""
        return self.projection.dim + (self.native_dim if self.weight < 1.0 else 0)

    @property
    def fingerprint(self) -> str:
        """The projection's fingerprint and the blend weight: what an index was built in."""
        return hashlib.sha256(f"{self.projection.fingerprint}:{self.weight:.6f}".encode()).hexdigest()[:32]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Native vectors (one or many) -> unit vectors whose inner product is the space's score."""
        x = np.asarray(vectors, np.float32).reshape(-1, self.native_dim)
        learned = self.projection.apply(x)
        if self.weight >= 1.0:
            return learned
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        native = x / np.where(norms > 1e-12, norms, 1.0)
        joined = np.hstack([np.sqrt(1.0 - self.weight) * native, np.sqrt(self.weight) * learned])
        return np.ascontiguousarray(joined, np.float32)

    def due(self, items: int) -> bool:
        """Whether a library now holding ``items`` has grown enough to be fitted again."""
        return items >= REFIT_GROWTH * max(self.items, 1)

    # ---- in an export (imports/export.py) ---------------------------------------------------------

    def to_export(self) -> tuple[dict[str, object], bytes]:
        """(meta.json's ``space`` object, the ``space.npz`` entry: mean and components)."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.projection.mean, components=self.projection.components)
        meta = {
            "weight": self.weight,
            "items": self.items,
            "fitted_at": self.fitted_at,
            "model_fingerprint": self.projection.model_fingerprint,
            "projection": self.projection.fingerprint,
        }
        return meta, buffer.getvalue()

    @classmethod
    def from_export(cls, meta: object, data: bytes, native_dim: int) -> LearnedSpace:
        """The space an export carries; ValueError naming what is wrong."""
        if not isinstance(meta, dict):
            raise ValueError("meta.json space must be an object")
        weight, items, fitted_at = meta.get("weight"), meta.get("items"), meta.get("fitted_at")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
            raise ValueError(f"space weight must be a number in (0, 1], got {weight!r}")
        if isinstance(items, bool) or not isinstance(items, int) or items < 0:
            raise ValueError(f"space items must be a non-negative integer, got {items!r}")
        if isinstance(fitted_at, bool) or not isinstance(fitted_at, int | float):
            raise ValueError(f"space fitted_at must be a number, got {fitted_at!r}")
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            mean, components = arrays["mean"], arrays["components"]
        if mean.shape != (native_dim,) or components.ndim != 2 or components.shape[0] != native_dim:
            raise ValueError(
                f"space.npz shapes {mean.shape} and {components.shape} do not fit dim {native_dim}"
            )
        projection = Projection.from_blobs(
            mean.astype("<f4").tobytes(),
            components.astype("<f4").tobytes(),
            native_dim,
            int(components.shape[1]),
            str(meta.get("model_fingerprint")),
            str(meta.get("projection")),
        )
        return cls(projection, float(weight), items, float(fitted_at))

    def to_json(self) -> dict[str, object]:
        """What the library's stats show of it."""
        return {
            "dim": self.projection.dim,
            "weight": self.weight,
            "fitted_at": self.fitted_at,
            "fitted_items": self.items,
            "fingerprint": self.fingerprint,
        }


def floors(space: LearnedSpace | None) -> tuple[decision.Floors, decision.Floors, decision.Floors]:
    """(search, deep, add) floors for scores of ``space`` (None: native cosine, the built-in ones)."""
    if space is None:
        return decision.SEARCH, decision.DEEP, decision.ADD
    f = FLOORS
    return (
        decision.Floors(checked=f.reach, unchecked=f.fallback, weak_score=f.weak),
        decision.Floors(checked=f.reach, unchecked=None, strong_only=True, weak_score=f.weak),
        decision.Floors(checked=f.verified, unchecked=f.fallback, weak_score=f.weak),
    )
