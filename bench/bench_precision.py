"""Arithmetic modes of the forward pass on this machine: speed, and how far each moves the vectors.

For every mode: images/s of the bare network on one torch thread at batch 1 and 4 (the daemon's
CPU plan), the cosine between its descriptors and fp32's on real photos, and category
precision@10 on a Caltech subset (exact search), so a mode is judged by the issue's rule: it may
be the default only if retrieval quality stays within 1 point of fp32.

- fp32: channels_last, ``inference_mode`` (the serving default on a CPU);
- bf16: CPU autocast (``[model] precision = "bf16"``); only fast with AVX-512 BF16 / AMX;
- int8: static post-training quantization, FX graph mode, oneDNN kernels, per-channel weights,
  7-bit activations (``reduce_range``: 8-bit saturates int16 accumulators on CPUs without VNNI).
  Calibrated once on seeded synthetic pictures (what a daemon could do without user data) and
  once on real photos not in the test set (the best case). Not offered by the daemon: see
  docs/quality.md. fbgemm's int8 kernels are timed too.

Photos come from ``../shared/data`` (or ``--data``) when present, else generated pictures (then
P@10 is skipped). The last line is what the daemon's ``precision = "auto"`` check picks on this
machine, run afresh (same_search/embed/precision.py).

    nice -n 10 .venv/bin/python bench/bench_precision.py
    .venv/bin/python bench/bench_precision.py --seconds 2 --photos 16     # smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import common  # first: puts the repository, tests/ and bench/ on sys.path
import numpy as np
import torch
from eval_quality import category_metrics, load_caltech, machine_description
from images import picture
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from same_search.config import ModelConfig
from same_search.embed.efficientnet_lite import SameConv2d
from same_search.embed.embedder import Embedder

#: ``shared/data`` beside the repository; a worktree elsewhere passes ``--data``.
DATA = common.SHARED_DATA
CALIBRATION_SEED = 20261126
CALIBRATION_IMAGES = 48


def freeze_same_padding(network: nn.Module, image_size: int) -> nn.Module:
    """A copy of ``network`` whose TF-"SAME" convolutions pad by constants for one input size.

    The padding of :class:`SameConv2d` is computed from the input shape at run time, which FX
    tracing cannot follow. Every image reaching the network has the same size, so each such
    convolution becomes a fixed ``ZeroPad2d`` + ``Conv2d`` with the same weights.
    """
    frozen = copy.deepcopy(network).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, name=name: sizes.__setitem__(name, args[0].shape[-2:])
        )
        for name, module in frozen.named_modules()
        if isinstance(module, SameConv2d)
    ]
    with torch.inference_mode():
        frozen(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        module = frozen.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        parent = frozen.get_submodule(parent_name) if parent_name else frozen
        setattr(parent, attr, _static_same_conv(module, size))
    return frozen.eval()


def _static_same_conv(module: nn.Conv2d, size: tuple[int, int]) -> nn.Module:
    """``module`` as a plain convolution behind the constant padding it applies at ``size``."""
    pads: list[int] = []
    for extent, kernel, stride in zip(
        reversed(size), reversed(module.kernel_size), reversed(module.stride), strict=True
    ):
        total = max((math.ceil(extent / stride) - 1) * stride + kernel - extent, 0)
        pads += [total // 2, total - total // 2]
    conv = nn.Conv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        0,
        module.dilation,
        module.groups,
        bias=module.bias is not None,
    )
    conv.load_state_dict(module.state_dict())
    conv.eval()
    return nn.Sequential(nn.ZeroPad2d(pads), conv) if any(pads) else conv


def calibration_pictures(
    count: int = CALIBRATION_IMAGES, size: int = 224, seed: int = CALIBRATION_SEED
) -> np.ndarray:
    """(count, 3, size, size) uint8 synthetic pictures, the same for the same arguments.

    Each is a blurred colour field with 1/f-like structure, overlaid with random filled shapes and
    lines, and some fine noise: the low-level statistics (smooth regions, edges, texture, the
    full 0..255 range) that set a convolutional network's activation ranges.
    """
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        field = np.zeros((size, size, 3), dtype=np.float32)
        for octave in (4, 8, 16, 32, 64):
            coarse = rng.uniform(0, 255, (octave, octave, 3)).astype(np.uint8)
            layer = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
            field += np.asarray(layer, dtype=np.float32) * (4.0 / octave)
        field = field / field.max() * 255.0
        picture = Image.fromarray(field.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(3, 12))):
            box = sorted(rng.integers(0, size, 2).tolist()) + sorted(rng.integers(0, size, 2).tolist())
            x0, x1, y0, y1 = box
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = int(rng.integers(3))
            if kind == 0:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            elif kind == 1:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 8)))
        picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
        pixels = np.asarray(picture, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        pictures.append(pixels.clip(0, 255).astype(np.uint8).transpose(2, 0, 1))
    return np.stack(pictures)


def quantize(
    network: nn.Module, size: int, engine: str, calibration: np.ndarray, normalise: Callable
) -> nn.Module:
    """Static int8 copy of ``network`` calibrated on ``calibration`` (N, 3, S, S uint8)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    frozen = freeze_same_padding(network, size)
    # The x86 mapping: per-channel weights, reduce_range activations (see the module docstring).
    prepared = prepare_fx(frozen, get_default_qconfig_mapping("x86"), (torch.zeros(1, 3, size, size),))
    with torch.inference_mode():
        for start in range(0, len(calibration), 8):
            prepared(normalise(torch.from_numpy(calibration[start : start + 8]).float().div_(255.0)))
    return convert_fx(prepared)


def rate(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``run`` on ``batch`` over about ``seconds`` (after two warm-up calls)."""
    run(batch)
    run(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def photos(count: int, offset: int, size: int) -> np.ndarray:
    """(count, 3, S, S) squashed ImageNet samples, or generated pictures without shared/data."""
    paths = sorted((DATA / "imagenet-samples").glob("*.JPEG"))[offset : offset + count]
    if paths:
        images = [Image.open(p).convert("RGB") for p in paths]
    else:
        images = [picture(offset + i) for i in range(count)]
    return np.stack(
        [np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1) for im in images]
    )


def main(argv: list[str] | None = None) -> int:
    """Time and compare every mode; print a markdown table."""
    global DATA
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per cell")
    parser.add_argument("--photos", type=int, default=64, help="photos for the cosine check")
    parser.add_argument("--caltech-per-class", type=int, default=15, help="P@10 subset (0: skip)")
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder holding imagenet-samples/, caltech101-dev/"
    )
    args = parser.parse_args(argv)
    DATA = args.data  # photos() reads the module global
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    fp32 = Embedder(
        ModelConfig(name="efficientnet_lite0", device="cpu", precision="fp32", workers=1, threads=1)
    )
    bf16 = Embedder(
        ModelConfig(name="efficientnet_lite0", device="cpu", precision="bf16", workers=1, threads=1),
        loaded=fp32.model,
    )
    size = fp32.cfg.image_size
    normalise = lambda x: (x - fp32._mean) / fp32._std  # noqa: E731
    test = photos(args.photos, 0, size)
    calibrations = {"synthetic": calibration_pictures(48, size)}
    if (DATA / "imagenet-samples").is_dir():
        calibrations["real photos"] = photos(48, 500, size)

    def int8_runner(net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        @torch.inference_mode()
        def run(batch: np.ndarray) -> np.ndarray:
            x = normalise(torch.from_numpy(batch).float().div_(255.0))
            pooled = net(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(pooled, dim=1).numpy()

        return run

    modes: dict[str, Callable[[np.ndarray], np.ndarray]] = {"fp32": fp32.embed, "bf16 autocast": bf16.embed}
    for engine in ("onednn", "fbgemm"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        for label, images in calibrations.items():
            if engine == "fbgemm" and label != "synthetic":
                continue  # timing only: the kernels, not the calibration, decide its speed
            modes[f"int8 {engine}, {label} calibration"] = int8_runner(
                quantize(fp32.model.network, size, engine, images, normalise)
            )

    caltech: tuple[np.ndarray, list[str]] | None = None
    if args.caltech_per_class and (DATA / "caltech101-dev").is_dir():
        from same_search.embed.images import ImageLimits, decode

        images, labels = load_caltech(DATA / "caltech101-dev", args.caltech_per_class)
        pixels = np.stack([fp32.preprocess(decode(data, ImageLimits(), size)) for data in images.values()])
        caltech = (pixels, labels)

    reference = fp32.embed(test)
    rows = []
    for name, run in modes.items():
        b1, b4 = rate(run, test[:1], args.seconds), rate(run, test[:4], args.seconds)
        vectors = np.concatenate([run(test[i : i + 4]) for i in range(0, len(test), 4)])
        cosine = (vectors * reference).sum(axis=1)
        p10 = "n/a"
        if caltech is not None and b4 >= 5:  # bf16 without hardware support: too slow to bother
            embedded = np.concatenate([run(caltech[0][i : i + 8]) for i in range(0, len(caltech[0]), 8)])
            p10 = f"{category_metrics(embedded, caltech[1])['P@10']:.3f}"
        rows.append(f"| {name} | {b1:.1f} | {b4:.1f} | {cosine.mean():.4f} | {cosine.min():.4f} | {p10} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Machine: {machine_description()}; efficientnet_lite0, 1 torch thread, {size} px.\n")
    print("| mode | img/s batch 1 | img/s batch 4 | cos to fp32 (mean) | cos (min) | Caltech P@10 |")
    print("|:---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f'\nWhat the daemon\'s `precision = "auto"` picks here (a fresh check): {auto_choice(fp32)}')
    return 0


def auto_choice(fp32: Embedder) -> str:
    """The daemon's own start-up check, run anew (empty cache) with the daemon's CPU plan."""
    with tempfile.TemporaryDirectory() as folder:
        cfg = ModelConfig(
            name="efficientnet_lite0",
            device="cpu",
            workers=1,
            threads=1,
            max_batch=4,
            precision_cache=str(Path(folder) / "precision.json"),
        )
        choice = Embedder(cfg, loaded=fp32.model).precision_choice
    return "not checked" if choice is None else f"{choice.mode} ({choice.reason})"


if __name__ == "__main__":
    sys.exit(main())
