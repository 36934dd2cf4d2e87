"""GPU JPEG decoding and its CPU fallback, exercised on the CPU.

The decision (which pictures go to the device, what happens when it refuses) does not need a
GPU: the decoding function is injected, either one that raises (nvJPEG refusing) or
torchvision's own CPU JPEG decoder standing in for nvJPEG, so the batched decode + tensor resize
path runs for real. tests/test_gpu.py runs the same with nvJPEG on a CUDA device.
"""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
import pytest
import torch
from images import encode, jpeg, picture
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from same_search.config import LimitsConfig, ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.errors import ImageRefused
from same_search.embed.gpu_decode import Decoded, JpegBatchDecoder, gather_batch, gpu_eligible
from same_search.embed.images import ImageLimits, decode, open_checked
from same_search.embed.service import EmbedService
from same_search.error_mapping import api_error
from same_search.errors import ErrNo

LIMITS = ImageLimits()
CPU = torch.device("cpu")


def cpu_stand_in(files: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """torchvision's libjpeg decoder in nvJPEG's place: same call, same all-or-nothing batches."""
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


def refusing(files: list[bytes], device: torch.device) -> list[torch.Tensor]:
    raise RuntimeError("nvjpeg: NVJPEG_STATUS_NOT_SUPPORTED")


def refusing_one(bad: bytes):
    """A decoder that refuses any batch holding ``bad`` (as nvJPEG does: no partial results)."""

    def decode_fn(files: list[bytes], device: torch.device) -> list[torch.Tensor]:
        if bad in files:
            raise RuntimeError("nvjpeg: bad file in batch")
        return cpu_stand_in(files, device)

    return decode_fn


def with_exif_rotation(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=90)
    return buffer.getvalue()


def cpu_pixels(embedder: Embedder, data: bytes) -> np.ndarray:
    return embedder.preprocess(decode(data, LIMITS, embedder.cfg.image_size))


def jpeg_item(data: bytes) -> Decoded:
    return Decoded(jpeg=data)


@pytest.mark.parametrize(
    ("data", "eligible"),
    [
        (jpeg(1), True),
        (encode(picture(2).convert("L")), True),
        (encode(picture(3), progressive=True), True),
        (encode(picture(4).convert("CMYK")), False),
        (with_exif_rotation(jpeg(5)), False),
        (encode(picture(6), "PNG"), False),
        (encode(picture(7), "WEBP"), False),
        (encode(picture(8), "GIF"), False),
    ],
    ids=["jpeg", "grey-jpeg", "progressive-jpeg", "cmyk-jpeg", "exif-rotated", "png", "webp", "gif"],
)
def test_which_pictures_go_to_the_gpu(data, eligible):
    assert gpu_eligible(open_checked(data, LIMITS)) is eligible


def test_a_decoder_that_refuses_everything_leaves_every_picture_to_the_cpu(embedder):
    files = [jpeg(10), jpeg(11)]
    png = encode(picture(12), "PNG")
    items = [jpeg_item(files[0]), Decoded(pixels=cpu_pixels(embedder, png)), jpeg_item(files[1])]
    decoder = JpegBatchDecoder(CPU, 224, refusing)
    pixels, errors = gather_batch(items, decoder, lambda data: cpu_pixels(embedder, data))
    assert errors == [None, None, None] and pixels.shape == (3, 3, 224, 224)
    expected = [cpu_pixels(embedder, files[0]), cpu_pixels(embedder, png), cpu_pixels(embedder, files[1])]
    assert np.array_equal(pixels.numpy(), np.stack(expected))
    assert (decoder.decoded, decoder.refused) == (0, 2)


def test_one_refused_file_does_not_sink_the_batch(embedder):
    files = [jpeg(20), jpeg(21), jpeg(22)]
    decoder = JpegBatchDecoder(CPU, 224, refusing_one(files[1]))
    pixels, errors = gather_batch([jpeg_item(f) for f in files], decoder, lambda d: cpu_pixels(embedder, d))
    assert errors == [None, None, None] and (decoder.decoded, decoder.refused) == (2, 1)
    assert np.array_equal(pixels[1].numpy(), cpu_pixels(embedder, files[1]))  # the CPU's own decode


def test_a_file_broken_for_both_decoders_fails_alone_with_216201(embedder):
    good = jpeg(30)
    broken = jpeg(31)[:2000]  # the header survives, the scan data does not
    assert gpu_eligible(open_checked(broken, LIMITS))
    decoder = JpegBatchDecoder(CPU, 224, refusing_one(broken))
    pixels, errors = gather_batch(
        [jpeg_item(broken), jpeg_item(good)], decoder, lambda d: cpu_pixels(embedder, d)
    )
    assert pixels.shape[0] == 1 and errors[1] is None
    assert isinstance(errors[0], ImageRefused) and api_error(errors[0]).err_no == ErrNo.BAD_IMAGE
    assert "216201" in str(api_error(errors[0]).body())


def test_batched_decode_and_tensor_resize_keep_the_vectors_of_the_pillow_path(embedder):
    """The device path (decode, antialiased bilinear squash on tensors) against Pillow's, through
    the network: within the precision bar (cosine 0.998), for small, large and grey JPEGs."""
    files = [
        jpeg(40),
        jpeg(41, (500, 375)),
        jpeg(42, (1600, 1200)),  # large: Pillow draft-decodes it at 1/2 or 1/4 scale
        encode(picture(43, (640, 480)).convert("L")),
        jpeg(44, (224, 224)),  # already the network's size: no resize at all
    ]
    decoder = JpegBatchDecoder(CPU, embedder.cfg.image_size, cpu_stand_in)
    pixels, errors = gather_batch(
        [jpeg_item(f) for f in files], decoder, lambda d: pytest.fail("no fallback")
    )
    assert errors == [None] * len(files) and decoder.decoded == len(files)
    on_device = embedder.embed_tensor(pixels)
    on_cpu = embedder.embed(np.stack([cpu_pixels(embedder, f) for f in files]))
    cosines = (on_device * on_cpu).sum(axis=1)
    assert cosines.min() > 0.998, cosines


def test_probe_turns_gpu_decoding_off_when_it_does_not_work(caplog):
    with caplog.at_level(logging.WARNING, logger="same_search.embed.gpu_decode"):
        assert JpegBatchDecoder.probe(CPU, 224, refusing) is None
    assert "every picture is decoded on the CPU" in caplog.text
    assert isinstance(JpegBatchDecoder.probe(CPU, 224, cpu_stand_in), JpegBatchDecoder)


async def test_the_service_serves_every_format_through_an_injected_device_decoder(embedder):
    """The batcher with a device decoder that refuses one file: JPEGs ride the device path, PNG
    and the refused JPEG the CPU path, a broken file gets err_no 100; every vector is right."""
    refused = jpeg(51)
    decoder = JpegBatchDecoder(CPU, embedder.cfg.image_size, refusing_one(refused))
    cfg = ModelConfig(name="efficientnet_lite0", max_wait_ms=50.0)
    service = EmbedService(embedder, cfg, LimitsConfig(), gpu_decoder=decoder)
    service.start()
    try:
        files = [
            jpeg(50),
            refused,
            encode(picture(52), "PNG"),
            jpeg(53, (800, 600)),
            with_exif_rotation(jpeg(54)),
        ]
        vectors = await asyncio.gather(*(service.embed_image(data) for data in files))
        with pytest.raises(ImageRefused) as broken:
            await service.embed_image(jpeg(55)[:2000])
        with pytest.raises(ImageRefused) as broken_with_thumbnail:
            await service.embed_with_thumbnail(jpeg(57)[:2000], 64)
        vector, thumbnail = await service.embed_with_thumbnail(jpeg(56), 64)
    finally:
        await service.close()
    expected = embedder.embed(np.stack([cpu_pixels(embedder, data) for data in files]))
    cosines = (np.stack(vectors) * expected).sum(axis=1)
    assert cosines.min() > 0.998, cosines
    assert api_error(broken.value).err_no == ErrNo.BAD_IMAGE == api_error(broken_with_thumbnail.value).err_no
    assert decoder.decoded >= 2 and decoder.refused >= 1
    small = Image.open(io.BytesIO(thumbnail))
    assert small.format == "JPEG" and max(small.size) == 64 and vector.shape == (1280,)


async def test_without_cuda_the_service_decodes_on_the_cpu(embedder):
    service = EmbedService(embedder, ModelConfig(name="efficientnet_lite0"), LimitsConfig())
    try:
        assert service.gpu_decoder is None
    finally:
        await service.close()
