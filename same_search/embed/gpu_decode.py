"""JPEG decoding on the GPU (nvJPEG, batched) with Pillow on the CPU as the fallback.

On a GPU machine the forward pass outruns one CPU decoding thread about 20 times
(docs/benchmarks.md), so with CUDA the decode threads only read each picture's header (size
limits, format, orientation) and hand the file itself to the batcher; the batch is decoded
with ``torchvision.io.decode_jpeg(..., device="cuda")`` and resized on the card.

What goes to the GPU is decided per picture by :func:`gpu_eligible` (baseline RGB or greyscale
JPEGs without an EXIF rotation: nvJPEG cannot apply one); everything else is decoded by Pillow
as before. nvJPEG returns nothing when one file of a batch fails, so a refused batch is retried
file by file and the files it still refuses go to Pillow, which gives them the precise error
(216201) when they are really broken. The decoding function is injected, so the whole decision
runs in CPU tests with a decoder that raises, or with torchvision's CPU decoder standing in.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from same_search.embed.images import make_thumbnail

log = logging.getLogger(__name__)

#: EXIF tag of the orientation; 1 = upright.
ORIENTATION = 0x0112
#: Modes nvJPEG decodes to RGB as Pillow would (CMYK and YCCK JPEGs are left to Pillow).
GPU_MODES = frozenset({"RGB", "L"})

#: (JPEG files, device) -> one (C, H, W) uint8 tensor per file on that device; raises if it refuses.
DecodeFn = Callable[[list[bytes], torch.device], list[torch.Tensor]]


@dataclass(frozen=True)
class Decoded:
    """What a decode thread hands the batcher: pixels decoded on the CPU, or a JPEG for the GPU."""

    pixels: np.ndarray | None = None
    jpeg: bytes | None = None


def gpu_eligible(image: Image.Image) -> bool:
    """Whether an opened (not yet decoded) picture may be decoded by nvJPEG."""
    if image.format != "JPEG" or image.mode not in GPU_MODES:
        return False
    try:
        orientation = image.getexif().get(ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block: let Pillow deal with the file
        return False
    return orientation in (1, None)


def jpeg_thumbnail(image: Image.Image, side: int) -> bytes:
    """The stored thumbnail of an opened JPEG bound for the GPU, decoded by Pillow at reduced
    scale (``draft``: 1/2 to 1/8 of the DCT), a fraction of the cost of a full decode."""
    image.draft("RGB", (side, side))
    image.load()
    return make_thumbnail(image.convert("RGB"), side)


def nvjpeg_decode(files: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched nvJPEG decode, to RGB."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


class JpegBatchDecoder:
    """Decodes batches of JPEG files on ``device`` and resizes them there to ``side`` x ``side``.

    The resize is bilinear with antialiasing, what Pillow's ``resize(BILINEAR)`` on the CPU
    path computes, and squashes the whole picture as the CPU path does.
    """

    def __init__(self, device: torch.device, side: int, decode_fn: DecodeFn = nvjpeg_decode) -> None:
        self.device = device
        self.side = side
        self._decode_fn = decode_fn
        #: Files decoded on the device, and files it refused (then decoded by Pillow).
        self.decoded = 0
        self.refused = 0

    @classmethod
    def probe(
        cls, device: torch.device, side: int, decode_fn: DecodeFn = nvjpeg_decode
    ) -> JpegBatchDecoder | None:
        """A decoder when ``decode_fn`` can decode a small JPEG on ``device``, else None (logged)."""
        decoder = cls(device, side, decode_fn)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, format="JPEG")
        try:
            decoded = decode_fn([buffer.getvalue()], device)
            if tuple(decoded[0].shape) != (3, 48, 64):
                raise RuntimeError(f"decoded shape {tuple(decoded[0].shape)}, expected (3, 48, 64)")
        except Exception as exc:
            log.warning(
                "JPEG decoding on %s is unavailable (%s); every picture is decoded on the CPU", device, exc
            )
            return None
        log.info("JPEG decoding on %s (nvJPEG); other formats and refused files on the CPU", device)
        return decoder

    def decode(self, files: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Each file as a (3, side, side) uint8 tensor on the device, or None where it was refused."""
        if not files:
            return []
        try:
            images: list[torch.Tensor | None] = list(self._decode_fn(list(files), self.device))
        except Exception as exc:  # nvJPEG gives nothing back when one file fails: find which
            log.debug(
                "batch of %d JPEGs refused on %s (%s); retrying one by one", len(files), self.device, exc
            )
            images = [self._decode_one(data) for data in files]
        resized = [None if image is None else self._resize(image) for image in images]
        refused = sum(image is None for image in resized)
        self.refused += refused
        self.decoded += len(resized) - refused
        return resized

    def _decode_one(self, data: bytes) -> torch.Tensor | None:
        try:
            return self._decode_fn([data], self.device)[0]
        except Exception as exc:
            log.debug("JPEG refused on %s (%s); decoding it on the CPU", self.device, exc)
            return None

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if tuple(image.shape[1:]) == (self.side, self.side):
            return image.contiguous()
        scaled = torch.nn.functional.interpolate(
            image[None].float(),
            size=(self.side, self.side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return scaled[0].round_().clamp_(0, 255).to(torch.uint8)


def gather_batch(
    items: Sequence[Decoded], decoder: JpegBatchDecoder | None, cpu_decode: Callable[[bytes], np.ndarray]
) -> tuple[torch.Tensor | None, list[Exception | None]]:
    """One forward pass's input from a mix of CPU-decoded pictures and JPEGs for the device.

    Returns the (M, 3, S, S) uint8 pixels of the items that decoded, in order, on the decoder's
    device (the CPU without one), or None when none did; and per item its error (None when it
    decoded). A JPEG the device refuses is decoded by ``cpu_decode``, whose error (err_no 100
    with 216201 for a broken file) is that item's alone: the rest of the batch goes on.
    """
    device = decoder.device if decoder is not None else torch.device("cpu")
    files = [index for index, item in enumerate(items) if item.jpeg is not None]
    on_device: list[torch.Tensor | None] = [None] * len(items)
    if files and decoder is not None:
        for index, tensor in zip(files, decoder.decode([items[i].jpeg for i in files]), strict=True):  # type: ignore[misc]
            on_device[index] = tensor
    errors: list[Exception | None] = [None] * len(items)
    for index, item in enumerate(items):
        if on_device[index] is not None:
            continue
        try:
            pixels = item.pixels if item.pixels is not None else cpu_decode(item.jpeg)  # type: ignore[arg-type]
        except Exception as exc:
            errors[index] = exc
            continue
        on_device[index] = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    decoded = [tensor for tensor in on_device if tensor is not None]
    return (torch.stack(decoded) if decoded else None), errors
