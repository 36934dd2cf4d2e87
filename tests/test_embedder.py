"""The embedder: real weights pinned by checksum, a golden vector, input scaling, refusals."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from images import picture

from same_search.config import ModelConfig
from same_search.embed import models
from same_search.embed.efficientnet_lite import EfficientNetLite0
from same_search.embed.embedder import Embedder

#: Top components of the average-pooled descriptor of picture(1234) (index -> value); recorded from a run
#: with the packaged Lite0 weights, TF input scaling and 224 px squash.
GOLDEN = {
    707: 0.2315,
    273: 0.22482,
    897: 0.20667,
    1112: 0.19733,
    1037: 0.1915,
    894: 0.18827,
    400: 0.18595,
    1133: 0.16471,
    1165: 0.15134,
    723: 0.14469,
    983: 0.13876,
    423: 0.13818,
}
IMAGENET = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


@pytest.fixture
def embedder(embedder: Embedder) -> Embedder:
    """A plain embedder on the session's loaded network: these tests are about its forward
    passes, which the session's embedder computes once per picture."""
    return Embedder(embedder.cfg, loaded=embedder.model)


def test_packaged_weights_are_the_pinned_file():
    path = models._lite0_package_weights()
    assert models.sha256_file(path) == models.LITE0_SHA256


def test_golden_vector(embedder: Embedder):
    vector = embedder.embed(embedder.preprocess(picture(1234))[None])[0]
    assert vector.dtype == np.float32 and vector.shape == (1280,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    for index, value in GOLDEN.items():
        assert vector[index] == pytest.approx(value, abs=2e-3), index


def test_batching_does_not_change_vectors(embedder: Embedder):
    batch = np.stack([embedder.preprocess(picture(seed)) for seed in range(4)])
    together = embedder.embed(batch)
    alone = np.concatenate([embedder.embed(batch[i : i + 1]) for i in range(4)])
    # fp32 on a CPU: the same to rounding; fp16 on a GPU picks other kernels per batch size.
    assert np.allclose(together, alone, atol=1e-4 if embedder.plan.precision == "fp32" else 1e-3)


def test_fingerprint_follows_preprocessing(embedder: Embedder):
    loaded = embedder.model
    other = Embedder(ModelConfig(name="efficientnet_lite0", pooling="gem"), loaded=loaded)
    assert other.info.fingerprint != embedder.info.fingerprint
    same = Embedder(ModelConfig(name="efficientnet_lite0"), loaded=loaded)
    assert same.info.fingerprint == embedder.info.fingerprint


def test_missing_resnet_weights_fall_back_or_refuse(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(models.ModelUnavailable, match="no weights for resnet50"):
        models.load_model(ModelConfig(name="resnet50", fallback_to_lite0=False))
    assert models.load_model(ModelConfig(name="resnet50")).model_id == "efficientnet_lite0"


def test_wrong_weights_file_is_refused(tmp_path):
    bogus = tmp_path / "resnet18.pth"
    torch.save({"not": torch.zeros(1)}, bogus)
    with pytest.raises(models.ModelUnavailable, match="does not fit"):
        models.load_model(ModelConfig(name="resnet18", weights=str(bogus), fallback_to_lite0=False))
    with pytest.raises(models.ModelUnavailable, match="does not exist"):
        models.load_model(
            ModelConfig(name="resnet18", weights=str(tmp_path / "nope.pth"), fallback_to_lite0=False)
        )
    with pytest.raises(models.ModelUnavailable, match="unknown model"):
        models.load_model(ModelConfig(name="vgg16"))


def test_resnet_from_torch_home_cache(tmp_path, monkeypatch):
    """A torchvision checkpoint in $TORCH_HOME is found and loaded strictly (here: a resnet18
    with arbitrary values, standing in for the real file, which this machine cannot download)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoints / "resnet18-f37072fd.pth")
    loaded = models.load_model(ModelConfig(name="resnet18", fallback_to_lite0=False))
    assert loaded.model_id == "resnet18" and loaded.dim == 512
    assert loaded.weights_source.endswith("resnet18-f37072fd.pth")
    assert loaded.network(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="shared/data/imagenet-samples not present")
def test_lite0_classifies_imagenet_samples_with_its_input_scaling():
    """Guards the network definition and TF-style scaling (88.6% top-1 on all 1,000 samples)."""
    from PIL import Image

    files = sorted(os.listdir(IMAGENET))
    synsets = sorted({f.split("_")[0] for f in files})
    chosen = files[::10]
    net = EfficientNetLite0()
    net.load_state_dict(torch.load(models._lite0_package_weights(), weights_only=True))
    net.eval()
    mean = torch.tensor(models.TF_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.TF_STD).view(1, 3, 1, 1)
    batch = []
    for name in chosen:
        image = Image.open(IMAGENET / name).convert("RGB")
        w, h = image.size
        scale = 256 / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        batch.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    with torch.inference_mode():
        predicted = net.classify((torch.stack(batch) - mean) / std).argmax(1).tolist()
    accuracy = np.mean([p == synsets.index(n.split("_")[0]) for p, n in zip(predicted, chosen, strict=True)])
    assert accuracy >= 0.8


def test_execution_plan_auto_and_explicit():
    from same_search.embed.embedder import plan_execution

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    auto = ModelConfig()
    assert plan_execution(auto, cpu, cores=2) == (plan := plan_execution(auto, cpu, cores=2))
    assert (plan.workers, plan.threads, plan.max_batch) == (2, 1, 4)
    one = plan_execution(ModelConfig(workers=1), cpu, cores=8)
    assert (one.workers, one.threads) == (1, 7)
    explicit = plan_execution(ModelConfig(workers=3, threads=2, max_batch=16), cpu, cores=8)
    assert (explicit.workers, explicit.threads, explicit.max_batch) == (3, 2, 16)
    on_gpu = plan_execution(auto, gpu, cores=16)
    assert on_gpu.workers == 1 and on_gpu.max_batch in (32, 64)
    assert (plan.precision, on_gpu.precision) == ("fp32", "fp16")


def test_precision_settings_are_checked():
    from same_search.config import ConfigError
    from same_search.embed.embedder import resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", gpu) == "fp32" and resolve_precision("bf16", gpu) == "bf16"
    with pytest.raises(ConfigError, match="needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision must be one of"):
        ModelConfig(precision="int8")
    with pytest.raises(ConfigError, match="pooling must be one of"):
        ModelConfig(pooling="max")


def test_cpu_bf16_and_int8_detection(tmp_path):
    from same_search.cpu import has_bf16, has_int8_dot

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: x\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert has_bf16(info) and has_int8_dot(info)
    info.write_text("flags\t\t: fpu avx2 fma avx_vnni\n")
    assert not has_bf16(info) and has_int8_dot(info)
    info.write_text("flags\t\t: fpu avx2 fma\nbugs\t\t: avx512_vnni\n")  # the flags line only
    assert not has_bf16(info) and not has_int8_dot(info)
    assert not has_bf16(tmp_path / "missing") and not has_int8_dot(tmp_path / "missing")


def test_bf16_vectors_agree_with_fp32(embedder: Embedder):
    """The precision modes run through the same embed(); bf16 must not move a vector far."""
    bf16 = Embedder(ModelConfig(name="efficientnet_lite0", precision="bf16"), loaded=embedder.model)
    assert bf16.plan.precision == "bf16" and bf16.info.fingerprint == embedder.info.fingerprint
    batch = np.stack([embedder.preprocess(picture(seed)) for seed in (5, 6)])
    cosines = (bf16.embed(batch) * embedder.embed(batch)).sum(axis=1)
    assert cosines.min() > 0.99, cosines


def test_gpu_batches_pad_to_a_few_warmed_sizes():
    from same_search.embed.embedder import batch_buckets

    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert batch_buckets(4) == [1, 2, 4] and batch_buckets(1) == [1]


def test_padding_to_a_bucket_does_not_change_vectors(embedder: Embedder):
    """The GPU pads batches with black pictures; the real pictures' vectors must not move."""
    batch = np.stack([embedder.preprocess(picture(seed)) for seed in range(3)])
    padded = embedder._pad_to_bucket(torch.from_numpy(batch))
    assert padded.shape[0] == 4 and not padded[3].any()
    assert np.allclose(embedder.embed(padded.numpy())[:3], embedder.embed(batch), atol=1e-4)


def test_warm_up_runs_every_batch_shape_once(embedder: Embedder, monkeypatch):
    """On a CPU one forward pass of one picture; on a GPU one per bucket (every padded size)."""
    shapes = []
    real_embed = embedder.embed

    def recording(batch):
        shapes.append(batch.shape)
        return real_embed(batch)

    monkeypatch.setattr(embedder, "embed", recording)
    began = time.perf_counter()
    seconds = embedder.warm_up()
    side = embedder.cfg.image_size
    sizes = embedder._buckets if embedder.device.type == "cuda" else [1]
    assert shapes == [(size, 3, side, side) for size in sizes]
    assert 0 < seconds <= time.perf_counter() - began  # what it reports is the time it took


def test_auto_plan_counts_the_cores_this_process_may_run_on():
    """``taskset`` / cpusets limit the plan (os.cpu_count() would see the whole machine)."""
    import subprocess
    import sys

    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); import torch; "
        "from same_search.config import ModelConfig; "
        "from same_search.embed.embedder import available_cores, plan_execution; "
        "plan = plan_execution(ModelConfig(), torch.device('cpu')); "
        "print(available_cores(), os.cpu_count(), plan.workers, plan.threads, plan.decode_threads)"
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    cores, total, workers, threads, decoders = map(int, out.stdout.split())
    assert (cores, workers, threads, decoders) == (1, 1, 1, 2), out.stdout
    assert total >= cores
