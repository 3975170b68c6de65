"""The data path against sampling: is loading ever the bottleneck of certification?

- ``data path``: images/s of reading, decoding and transforming JPEGs the way ``imagenet:ROOT`` does
  for certification (500x375 JPEGs, a typical ImageNet size: resize the shorter side to 256, centre
  crop 224, to float), through ``costsmooth.data.batches`` with 0 (baseline: in this process), 1 and 2
  loader processes, 64 images per round, 16 per batch.
- ``sampling``: the time to certify one input at n = 100,000 with a small model (an MLP on 3x32x32,
  CIFAR-shaped; an ImageNet model takes far longer per input), i.e. how long the loader has to
  produce the next input.
- ``start-up``: listing and fingerprinting a 50,000-file ``imagenet:ROOT`` tree (hard links of a few
  JPEGs), what certification does before its first row.
"""
import os

import numpy as np
import pytest
import torch

import costsmooth
from costsmooth import data
from costsmooth.models import build_model
from costsmooth.runs import fingerprint_dataset

IMAGES, PER_BATCH = 64, 16


def _jpeg(path, seed, w=500, h=375):
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(path, quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for k in range(IMAGES):
        folder = root / "val" / f"n{k % 8:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        _jpeg(folder / f"{k:05d}.JPEG", k)
    return root


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_data_path_images_per_second(benchmark, tree, workers):
    ds = data.load_dataset(f"imagenet:{tree}", "test")
    groups = [list(range(s, s + PER_BATCH)) for s in range(0, IMAGES, PER_BATCH)]

    def run():
        return sum(b.inputs.shape[0] for b in data.batches(ds, groups, workers=workers))

    assert run() == IMAGES
    benchmark.group = f"data path: imagenet:ROOT test transform, {IMAGES} JPEGs 500x375 -> 3x224x224 (cpu)"
    benchmark.extra_info.update(variant=f"workers={workers}", images=IMAGES, role="baseline" if workers == 0 else "")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


def test_sampling_time_per_input(benchmark):
    torch.manual_seed(0)
    model = build_model("mlp", 10, (3, 32, 32)).eval()
    x = torch.rand(1, 3, 32, 32)
    n = 100_000

    def run():
        return costsmooth.sample_counts(model, x, n, 0.25, batch_size=1000)

    assert int(run().sum()) == n
    benchmark.group = "sampling: one input at n = 100,000, MLP on 3x32x32 (cpu)"
    benchmark.extra_info.update(variant="sample_counts", images=1, samples=n, role="baseline")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)


def test_startup_of_a_50000_file_tree(benchmark, tmp_path):
    seeds = [tmp_path / f"{k}.JPEG" for k in range(4)]
    for k, p in enumerate(seeds):
        _jpeg(p, k, 64, 48)
    for k in range(50_000):
        folder = tmp_path / "big" / "val" / f"n{k % 1000:04d}"
        if k < 1000:
            folder.mkdir(parents=True)
        os.link(seeds[k % 4], folder / f"{k:06d}.JPEG")

    def run():
        ds = data.load_dataset(f"imagenet:{tmp_path / 'big'}", "test")
        return len(ds), fingerprint_dataset(ds)

    assert run()[0] == 50_000
    benchmark.group = "start-up: list and fingerprint a 50,000-file imagenet:ROOT tree (cpu)"
    benchmark.extra_info.update(variant="load_dataset + fingerprint", images=50_000, role="baseline")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
