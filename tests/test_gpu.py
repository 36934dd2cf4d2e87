"""The GPU path: fp16 forward passes, pinned uint8 transfer, the card-sized batch plan.

Skipped where torch sees no CUDA device (CI never has one); run on a GPU machine, the rest of the
suite also goes through the GPU, since ``device = "auto"`` picks it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import b64, brief
from daemon import Daemon
from images import jpeg, picture

from same_search.config import ModelConfig
from same_search.embed.embedder import Embedder

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
        assert "device=cuda" in daemon.log.read_text() and "precision=fp16" in daemon.log.read_text()
    finally:
        daemon.terminate()
