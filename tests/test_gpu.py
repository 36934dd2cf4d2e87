"""The GPU path: fp16 forward passes, pinned uint8 transfer, the card-sized batch plan, nvJPEG.

Skipped where torch sees no CUDA device (CI never has one); run on a GPU machine, the rest of the
suite also goes through the GPU, since ``device = "auto"`` picks it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from conftest import b64, brief
from daemon import Daemon
from images import encode, jpeg, picture

from same_search.config import LimitsConfig, ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.gpu_decode import Decoded, JpegBatchDecoder, gather_batch
from same_search.embed.images import ImageLimits, decode
from same_search.embed.service import EmbedService

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def cpu_fp32() -> Embedder:
    return Embedder(ModelConfig(name="efficientnet_lite0", device="cpu"))


def test_auto_plan_on_a_gpu_is_fp16_one_worker_card_sized_batch():
    gpu = Embedder(ModelConfig(name="efficientnet_lite0"))
    assert gpu.device.type == "cuda"
    assert (gpu.plan.precision, gpu.plan.workers) == ("fp16", 1)
    assert gpu.plan.max_batch in (32, 64)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_gpu_vectors_agree_with_cpu_fp32(cpu_fp32: Embedder, precision: str):
    """Same fingerprint on both devices, so their vectors must be interchangeable."""
    gpu = Embedder(ModelConfig(name="efficientnet_lite0", device="cuda", precision=precision))
    assert gpu.info.fingerprint == cpu_fp32.info.fingerprint
    batch = np.stack([cpu_fp32.preprocess(picture(seed)) for seed in range(8)])
    cosines = (gpu.embed(batch) * cpu_fp32.embed(batch)).sum(axis=1)
    # Measured on an H200: fp16 >= 0.995; bf16 (8-bit mantissa) down to 0.993.
    assert cosines.min() > (0.99 if precision == "bf16" else 0.995), cosines
    alone = np.concatenate([gpu.embed(batch[i : i + 1]) for i in range(len(batch))])
    assert np.allclose(alone, gpu.embed(batch), atol=5e-3)


def test_nvjpeg_batches_keep_the_vectors_of_the_cpu_path(cpu_fp32: Embedder):
    """nvJPEG decode + resize on the card, then the GPU forward pass, against Pillow + CPU fp32:
    within the precision bar (cosine 0.998) for small, large (draft-decoded on the CPU), grey and
    progressive JPEGs, with a PNG riding the CPU path in the same batch."""
    gpu = Embedder(ModelConfig(name="efficientnet_lite0", device="cuda", precision="fp32"))
    files = [
        jpeg(1),
        jpeg(2, (500, 375)),
        jpeg(3, (1600, 1200)),
        jpeg(4, (4000, 3000)),
        encode(picture(5, (640, 480)).convert("L")),
        encode(picture(6), progressive=True),
    ]
    png = encode(picture(7), "PNG")
    limits = ImageLimits()

    def cpu_pixels(data: bytes) -> np.ndarray:
        return cpu_fp32.preprocess(decode(data, limits, 224))

    decoder = JpegBatchDecoder.probe(gpu.device, 224)
    assert decoder is not None, "nvJPEG unavailable on this CUDA machine"
    items = [Decoded(jpeg=data) for data in files] + [Decoded(pixels=cpu_pixels(png))]
    pixels, errors = gather_batch(items, decoder, cpu_pixels)
    assert errors == [None] * len(items) and pixels.device.type == "cuda"
    assert decoder.decoded == len(files), (decoder.decoded, decoder.refused)
    on_gpu = gpu.embed_tensor(pixels)
    on_cpu = cpu_fp32.embed(np.stack([cpu_pixels(data) for data in [*files, png]]))
    cosines = (on_gpu * on_cpu).sum(axis=1)
    assert cosines.min() > 0.998, cosines


async def test_the_service_on_a_gpu_decodes_jpegs_there_and_the_rest_on_the_cpu(cpu_fp32: Embedder):
    gpu = Embedder(ModelConfig(name="efficientnet_lite0", device="cuda"))
    service = EmbedService(gpu, ModelConfig(name="efficientnet_lite0"), LimitsConfig())
    assert service.gpu_decoder is not None
    service.start()
    try:
        files = [jpeg(10), encode(picture(11), "PNG"), jpeg(12, (1200, 900)), jpeg(13)[:2000]]
        answers = await asyncio.gather(*(service.embed_image(data) for data in files), return_exceptions=True)
    finally:
        await service.close()
    assert isinstance(answers[3], Exception) and getattr(answers[3], "err_no", None) == 100
    expected = cpu_fp32.embed(
        np.stack([cpu_fp32.preprocess(decode(f, ImageLimits(), 224)) for f in files[:3]])
    )
    cosines = (np.stack(answers[:3]) * expected).sum(axis=1)
    assert cosines.min() > 0.995, cosines  # fp16 forward pass (auto on a GPU): the fp16 bar
    assert service.gpu_decoder.decoded >= 2


def test_daemon_on_the_gpu_serves_add_and_search(tmp_path):
    daemon = Daemon(tmp_path, '[model]\nname = "efficientnet_lite0"\n')
    daemon.start()
    try:
        assert daemon.rts("signup", appid="gpu")["err_no"] == 0
        images = [jpeg(seed) for seed in range(6)]
        for seed, image in enumerate(images):
            added = daemon.rts("add", appid="gpu", image=b64(image), features=[brief(f"#{seed}")])
            assert added["err_no"] == 0
        found = daemon.rts("search", appid="gpu", image=b64(images[3]), rn=3)
        assert found["err_no"] == 0 and found["data_items"][0]["score"] > 0.99
        log = daemon.log.read_text()
        assert "device=cuda" in log and "precision=fp16" in log and "JPEG decoding on cuda" in log
    finally:
        daemon.terminate()
