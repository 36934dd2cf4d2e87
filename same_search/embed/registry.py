"""Every model the daemon serves: one Embedder and one batching queue per distinct fingerprint.

``[model]`` is the default (the feature service's model, and a new library's unless signup names
another); ``[models.<name>]`` are further profiles. Two profiles whose settings make the same
vectors (same fingerprint) share one embedder and one queue. A profile whose weights cannot be
loaded does not stop the daemon: it is listed with its reason, and the libraries that need it are
set aside (err_no 6) rather than served with another model. Only the default must load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from same_search.config import DEFAULT_MODEL, ConfigError, LimitsConfig, ModelConfig
from same_search.embed.admission import DecodeAdmission
from same_search.embed.embedder import Embedder, ModelInfo, model_fingerprint
from same_search.embed.models import ModelUnavailable, load_model
from same_search.embed.service import EmbedService

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One loaded model: the profile names that lead to it and its batching queue."""

    names: list[str]
    embed: EmbedService

    @property
    def info(self) -> ModelInfo:
        return self.embed.info


@dataclass
class ModelRegistry:
    """Loaded models by fingerprint and by profile name, and the profiles that failed to load."""

    default: EmbedService
    served: dict[str, ServedModel] = field(default_factory=dict)
    #: profile name -> fingerprint of the model serving it.
    names: dict[str, str] = field(default_factory=dict)
    #: profile name -> why it could not be loaded.
    failed: dict[str, str] = field(default_factory=dict)

    def _serve(self, name: str, embed: EmbedService) -> None:
        fingerprint = embed.info.fingerprint
        served = self.served.get(fingerprint)
        if served is None:
            self.served[fingerprint] = ServedModel([name], embed)
        else:
            served.names.append(name)
        self.names[name] = fingerprint

    def by_name(self, name: str) -> EmbedService | None:
        """The queue of a profile that loaded, or None (unknown, or failed: see ``failed``)."""
        fingerprint = self.names.get(name)
        return None if fingerprint is None else self.served[fingerprint].embed

    def for_fingerprint(self, fingerprint: str) -> EmbedService | None:
        """The queue of the model that makes vectors with ``fingerprint``, if one is loaded."""
        served = self.served.get(fingerprint)
        return None if served is None else served.embed

    def profile_names(self) -> list[str]:
        """Every configured profile name, loaded or not."""
        return [*self.names, *self.failed]

    def name_of(self, fingerprint: str) -> str | None:
        """The first profile name serving ``fingerprint``."""
        served = self.served.get(fingerprint)
        return None if served is None else served.names[0]

    @property
    def queue_size(self) -> int:
        """Requests waiting in every model's queue."""
        return sum(served.embed.queue_size for served in self.served.values())

    def describe(self) -> list[dict]:
        """What /healthz and the console show per profile."""
        shown = []
        for served in self.served.values():
            info = served.info
            shown.append(
                {
                    "names": served.names,
                    "id": info.model_id,
                    "dim": info.dim,
                    "fingerprint": info.fingerprint,
                    "device": info.device,
                    "default": DEFAULT_MODEL in served.names,
                    "status": "ok",
                }
            )
        shown += [
            {"names": [name], "status": "unavailable", "reason": why} for name, why in self.failed.items()
        ]
        return shown

    async def close(self) -> None:
        """Stop every queue (queued requests get err_no 5), then the shared decode budget's threads."""
        for served in self.served.values():
            await served.embed.close()
        self.default.admission.close()


async def open_registry(
    profiles: dict[str, ModelConfig],
    limits: LimitsConfig,
    default_embedder: Embedder | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ModelRegistry:
    """Load the default model (which must load) and every other profile (which may fail)."""
    default_cfg = profiles[DEFAULT_MODEL]
    if default_embedder is None:
        default_embedder = await asyncio.to_thread(Embedder, default_cfg)
    # One decode budget for every model's queue (and the local features): a large picture costs
    # the machine the same whichever model embeds it.
    admission = DecodeAdmission.from_limits(limits)
    default = await _start(
        EmbedService(default_embedder, default_cfg, limits, on_batch=on_batch, admission=admission)
    )
    registry = ModelRegistry(default)
    registry._serve(DEFAULT_MODEL, default)
    try:
        for name, cfg in profiles.items():
            if name != DEFAULT_MODEL:
                await _load_profile(registry, name, cfg, limits, on_batch)
    except BaseException:
        await registry.close()
        raise
    return registry


async def _load_profile(
    registry: ModelRegistry,
    name: str,
    cfg: ModelConfig,
    limits: LimitsConfig,
    on_batch: Callable[[int], None] | None,
) -> None:
    try:
        loaded = await asyncio.to_thread(load_model, cfg)
        fingerprint = model_fingerprint(cfg, loaded)
        if fingerprint in registry.served:  # same vectors as a model already loaded: share it
            registry._serve(name, registry.served[fingerprint].embed)
            log.info(
                "model profile %s makes the same vectors as %s: shared", name, registry.name_of(fingerprint)
            )
            return
        embedder = await asyncio.to_thread(Embedder, cfg, loaded)
        admission = registry.default.admission
        embed = await _start(EmbedService(embedder, cfg, limits, on_batch=on_batch, admission=admission))
    except (ModelUnavailable, ConfigError, OSError, RuntimeError) as exc:
        registry.failed[name] = str(exc)
        log.error(
            "model profile %s is UNAVAILABLE (the libraries built with it are set aside): %s", name, exc
        )
        return
    registry._serve(name, embed)


async def _start(embed: EmbedService) -> EmbedService:
    """Warm a queue's model up and start its batching loops (closing it if that fails)."""
    try:
        await embed.warm_up()
    except BaseException:
        await embed.close()  # its thread pools exist already; a failed start must not leave them
        raise
    embed.start()
    return embed
