"""Image datasets read lazily from files: ImageNet and folder layouts, Cohen et al.'s transforms (equal to
torchvision's), the DataLoader path, scalable fingerprints, resume checks and streaming memory."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from costsmooth import data
from costsmooth.cli import main
from costsmooth.data import transforms
from costsmooth.models import build_model, save_checkpoint
from costsmooth.results import read_counts, read_meta, read_tsv
from tests.conftest import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image(w, h, seed=0, mode="RGB"):
    """A smooth random image (compresses well, but every pixel differs)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    return img.convert(mode) if mode != "RGB" else img


def make_tree(root, classes, per_class, size=(40, 30), ext=".JPEG", seed=0):
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            image(*size, seed=seed + 1000 * c + i).save(os.path.join(root, name, f"img_{i:04d}{ext}"), quality=90)


# -- transforms ------------------------------------------------------------------------------------------
def _torchvision():
    try:  # a torchvision built for another torch fails at import with errors other than ImportError
        import torchvision.transforms as T
        return T
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision does not import here ({type(err).__name__})")


@pytest.mark.parametrize("w,h", [(300, 257), (257, 300), (500, 375), (256, 256), (224, 300), (299, 256),
                                 (1000, 333)])
def test_imagenet_test_transform_equals_torchvision(tmp_path, w, h):
    T = _torchvision()
    from PIL import Image
    path = tmp_path / "x.JPEG"
    image(w, h, seed=w * h).save(path, quality=95)
    with Image.open(path) as img:
        ours, _ = transforms.ImageTransform(224, "crop", 256)(img)
    with open(path, "rb") as f:
        theirs = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(Image.open(f).convert("RGB"))
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_imagenet_test_transform_rederived_from_torchvision_rules():
    """torchvision's documented arithmetic, derived by hand: Resize(256) sets the shorter side to 256 and the
    longer to int(256 * long / short); CenterCrop(224) cuts at round((size - 224) / 2), halves to even."""
    from PIL import Image
    # (w, h) -> resized (w, h), crop (left, top)
    cases = {(300, 257): ((298, 256), (37, 16)),   # int(298.83) = 298; 37.0, 16.0
             (257, 300): ((256, 298), (16, 37)),
             (500, 375): ((341, 256), (58, 16)),   # int(341.33) = 341; (341 - 224) / 2 = 58.5 -> 58 (to even)
             (351, 300): ((299, 256), (38, 16)),   # int(299.52) = 299; 37.5 -> 38 (to even)
             (256, 256): ((256, 256), (16, 16)),   # already 256: returned as it is
             (1000, 333): ((768, 256), (272, 16))}  # int(768.77) = 768
    for (w, h), (size, (left, top)) in cases.items():
        assert transforms.resize_shorter(w, h, 256) == size
        assert transforms.center_crop_box(*size, 224, 224) == (left, top, left + 224, top + 224)
        img = image(w, h, seed=w)
        ours, flags = transforms.ImageTransform(224, "crop", 256)(img)
        resized = img if size == (w, h) else img.resize(size, Image.BILINEAR)
        crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.uint8)
        expected = torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255)
        assert torch.equal(ours, expected), (w, h)
        assert flags == transforms.CONVERTED_SIZE
    assert transforms.center_crop_box(297, 256, 224, 224)[0] == 36  # 36.5 -> 36: not rounded half up


def test_training_augmentations_are_seeded_and_shaped():
    x = torch.rand(3, 32, 32)
    a = transforms.random_crop_flip(x, np.random.default_rng([0, 1, 5]))
    b = transforms.random_crop_flip(x, np.random.default_rng([0, 1, 5]))
    assert a.shape == x.shape and torch.equal(a, b)
    outs = {tuple(transforms.random_crop_flip(x, np.random.default_rng([0, e, 5])).flatten()[:40].tolist())
            for e in range(20)}
    assert len(outs) > 5  # crops and flips differ across epochs
    # every output is a 32x32 window of the zero-padded input, possibly flipped
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = [padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
    assert any(torch.equal(a, w) or torch.equal(a, w.flip(-1)) for w in windows)
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (100, 400), (224, 224)]:
        for _ in range(50):
            left, top, right, bottom = transforms.random_resized_crop_box(w, h, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
    out, _ = transforms.RandomResizedCropFlip(224)(image(500, 375), np.random.default_rng(3))
    assert out.shape == (3, 224, 224) and 0 <= float(out.min()) and float(out.max()) <= 1


# -- layouts -------------------------------------------------------------------------------------------
def test_imagenet_layout_lists_as_torchvision_image_folder(tmp_path):
    val = tmp_path / "val"
    make_tree(val, ["n02", "n01", "n10"], 2, size=(60, 50))
    (val / "n01" / "sub").mkdir()
    image(50, 60, seed=9).save(val / "n01" / "sub" / "a.jpeg")
    (val / "n01" / "notes.txt").write_text("not an image")
    image(40, 40, seed=8).save(val / "n10" / "B.PNG")
    ds = data.load_dataset(f"imagenet:{tmp_path}", "test")
    assert isinstance(ds, torch.utils.data.Dataset) and ds.classes == ["n01", "n02", "n10"]
    assert ds.files == ["n01/img_0000.JPEG", "n01/img_0001.JPEG", "n01/sub/a.jpeg", "n02/img_0000.JPEG",
                        "n02/img_0001.JPEG", "n10/B.PNG", "n10/img_0000.JPEG", "n10/img_0001.JPEG"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    x, y = ds[2]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0 and len(ds) == 8
    assert ds.mean == list(data.NORMALIZATION["imagenet"][0])
    try:
        T = _torchvision()
        from torchvision.datasets import ImageFolder
        ref = ImageFolder(str(val))
        assert ref.classes == ds.classes and [(os.path.relpath(p, val), c) for p, c in ref.samples] == \
            list(zip(ds.files, ds.labels.tolist()))
    except pytest.skip.Exception:
        pass
    with pytest.raises(data.DatasetError, match="ROOT/train/<wnid>"):
        data.load_dataset(f"imagenet:{tmp_path}", "train")  # certifying never needs it; training does
    with pytest.raises(data.DatasetError, match="--split all is for folder"):
        data.load_dataset(f"imagenet:{tmp_path}", "all")
    (val / "empty").mkdir()
    with pytest.raises(data.DatasetError, match="empty holds no images"):
        data.load_dataset(f"imagenet:{tmp_path}", "test")


def test_folder_size_policy_and_channel_handling(tmp_path):
    from PIL import Image
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    image(40, 30, seed=1, mode="L").save(tmp_path / "a" / "grey.png")  # greyscale, another size
    image(16, 16, seed=2).save(tmp_path / "a" / "ok.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(tmp_path / "b" / "alpha.png")
    ds = data.load_dataset(f"folder:{tmp_path}", "all", image_size=16, resize="crop")
    assert ds.input_shape == (3, 16, 16) and ds.labels.tolist() == [0, 0, 1]
    assert "centre 16x16" in ds.describe()["resize"] and "greyscale" in ds.describe()["channels"]
    x, _ = ds[0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1])  # greyscale copied to the three channels
    count = data.loading.ConversionCount()
    count.add(b for batch in data.batches(ds, [[0, 1, 2]], workers=0) for b in batch.infos)
    assert (count["read"], count["channels"], count["resized"]) == (3, 2, 1)
    assert "2 converted to RGB" in count.report("t", 16) and "1 resized from another size to 16x16" in count.report("t", 16)
    assert data.load_dataset(f"folder:{tmp_path}", "all").input_shape == (3, 32, 32)  # default: as before
    with pytest.raises(data.DatasetError, match="not 16x16"):
        data.load_dataset(f"folder:{tmp_path}", "all", image_size=16, resize="exact")[0]
    with pytest.raises(data.DatasetError, match="--image-size is for folder: and ham10000:"):
        data.load_dataset("digits", "test", image_size=16)
    with pytest.raises(data.DatasetError, match="--resize zoom: use stretch, crop"):
        data.load_dataset(f"folder:{tmp_path}", "all", resize="zoom")


def test_streamed_statistics_equal_the_in_memory_ones(tmp_path):
    make_tree(tmp_path, ["a", "b"], 5, size=(20, 12))
    ds = data.load_dataset(f"folder:{tmp_path}", "all", image_size=8)
    x = ds.take(range(len(ds)))[0]
    mean, std = data.channel_stats(ds, workers=0, batch=3)
    assert np.allclose(mean, x.double().mean((0, 2, 3)).tolist(), atol=1e-12)
    assert np.allclose(std, x.double().std((0, 2, 3)).tolist(), atol=1e-9)
    # two worker processes deliver the same batches, in order
    a = [b.inputs for b in data.batches(ds, [[0, 3], [1], [9, 2]], workers=0)]
    b = [b.inputs for b in data.batches(ds, [[0, 3], [1], [9, 2]], workers=2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(b) == 3


# -- certify and train through the loader ----------------------------------------------------------------
def _model(tmp_path, shape=(3, 16, 16), classes=2, name="m.pt"):
    torch.manual_seed(0)
    model = build_model("mlp", classes, shape)
    path = str(tmp_path / name)
    save_checkpoint(path, model, "mlp", classes, shape)
    return path


def test_certify_an_image_folder_records_inputs_and_refuses_changed_data(tmp_path, capsys):
    root = tmp_path / "data"
    make_tree(root / "train", ["a", "b"], 1, size=(20, 20))  # never read by certify
    make_tree(root / "test", ["a", "b"], 4, size=(20, 20))
    (root / "train" / "a" / "img_0000.JPEG").write_bytes(b"corrupt")
    model, out = _model(tmp_path), str(tmp_path / "out.tsv")
    args = [f"folder:{root}", model, "0.25", out, "--N0", "8", "--N", "32", "--image-size", "16", "--quiet",
            "--max", "4"]
    assert main(["certify", *args, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 resized from another size to 16x16" in printed
    meta = read_meta(out)
    assert meta["data_format"]["input_shape"] == [3, 16, 16] and "resized to 16x16" in meta["data_format"]["resize"]
    counts = read_counts(out)
    assert counts[1]["input"]["file"] == os.path.join("a", "img_0001.JPEG")
    with open(root / "test" / "a" / "img_0001.JPEG", "rb") as f:
        import hashlib
        assert counts[1]["input"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    # the same rows with --workers 0: identical certificates (noise depends on seed and index only)
    out0 = str(tmp_path / "out0.tsv")
    assert main(["certify", *args[:3], out0, *args[4:], "--workers", "0"]) == 0
    assert [r["radius"] for r in read_tsv(out)] == [r["radius"] for r in read_tsv(out0)]

    # a certified image replaced by another of the same byte size: named on resume
    path = root / "test" / "a" / "img_0001.JPEG"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # one byte of the entropy-coded data
    path.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["certify", *args[:-1], "8"]) == 2
    err = capsys.readouterr().err
    assert "a/img_0001.JPEG (input 1) was replaced" in err and err.count("\n") == 1
    path.write_bytes(bytes(blob[:-3]) + bytes([blob[-3] ^ 0xFF]) + bytes(blob[-2:]))  # restored: resumes
    assert main(["certify", *args[:-1], "8"]) == 0 and len(read_tsv(out)) == 8

    os.rename(root / "test" / "b", root / "test" / "c")  # a renamed class
    os.rename(root / "train" / "b", root / "train" / "c")
    capsys.readouterr()
    assert main(["certify", *args]) == 2
    err = capsys.readouterr().err
    assert "class(es) b gone and c new" in err and err.count("\n") == 1


def test_corrupt_image_is_one_line_error(tmp_path, capsys):
    make_tree(tmp_path / "d", ["a", "b"], 2, size=(16, 16))
    (tmp_path / "d" / "b" / "img_0000.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    model = _model(tmp_path)
    for workers in ("0", "1"):
        code = main(["certify", f"folder:{tmp_path / 'd'}", model, "0.25", str(tmp_path / f"o{workers}.tsv"),
                     "--split", "all", "--image-size", "16", "--N0", "4", "--N", "8", "--quiet", "--workers", workers])
        err = capsys.readouterr().err
        assert code == 2 and "cannot read image" in err and "b/img_0000.JPEG" in err and err.count("\n") == 1


def test_train_streams_a_folder_with_statistics_from_one_pass(tmp_path):
    from costsmooth.models import load_model
    from costsmooth.train import COHEN_RECIPE, recipe_for, train
    make_tree(tmp_path / "d" / "train", ["a", "b"], 6, size=(12, 12))
    make_tree(tmp_path / "d" / "test", ["a", "b"], 1, size=(12, 12))
    ds = data.load_dataset(f"folder:{tmp_path / 'd'}", "train", image_size=8)
    assert ds.mean is None  # no statistics read when the dataset is opened
    path = train(ds, "mlp", "gaussian", 0.25, str(tmp_path / "run"), epochs=2, batch_size=4, progress=False,
                 workers=1)
    model = load_model(path)
    mean, _ = data.channel_stats(ds, workers=0)
    assert np.allclose(model[0].mean.flatten().tolist(), mean, atol=1e-6)
    assert recipe_for("cifar10:/x") == COHEN_RECIPE == recipe_for("imagenet:/y")
    assert COHEN_RECIPE == {"epochs": 90, "lr": 0.1, "batch": 256, "optimizer": "sgd", "schedule": "step",
                            "weight_decay": 1e-4}
    assert recipe_for("digits")["epochs"] == 30


def test_cifar10_train_split_is_augmented_for_training_only(tmp_path):
    write_cifar10(tmp_path)
    train_set = data.load_dataset(f"cifar10:{tmp_path}", "train")
    assert train_set.augment is not None and data.load_dataset(f"cifar10:{tmp_path}", "test").augment is None
    plain = next(data.batches(train_set, [[0, 1, 2]])).inputs
    assert torch.equal(plain, train_set.inputs[[0, 1, 2]])  # certification reads the inputs as they are
    e0 = next(data.batches(train_set, [[0, 1, 2]], seed=1, epoch=0, workers=0)).inputs
    again = next(data.batches(train_set, [[0, 1, 2]], seed=1, epoch=0, workers=1)).inputs
    e1 = next(data.batches(train_set, [[0, 1, 2]], seed=1, epoch=1, workers=0)).inputs
    assert torch.equal(e0, again) and not torch.equal(e0, e1) and not torch.equal(e0, plain)


def test_peak_memory_stays_flat_as_the_tree_grows(tmp_path):
    """Certifying 10 inputs of a tree of 224x224 JPEGs: peak memory of 2,000 images within 100 MB of 200
    (decoding them all would take 1.2 GB). Distinct files are hard links of a few JPEGs."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i in range(10):
        image(224, 224, seed=i).save(seeds / f"{i}.JPEG", quality=85)
    model = str(tmp_path / "tiny.pt")  # a tiny TorchScript model: the memory measured is the data path's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's notice
        torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                             torch.nn.Linear(48, 4))).save(model)
    script = textwrap.dedent("""
        import resource, sys
        import torch
        from costsmooth.data import load_dataset
        from costsmooth.runs import certify_dataset
        certify_dataset(torch.jit.load(sys.argv[2]), load_dataset("imagenet:" + sys.argv[1], "test"), 0.25, sys.argv[3],
                        n0=4, n=16, batch=32, max_index=10, progress=False, workers=0)
        print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    peaks = {}
    for total in (200, 2000):
        root = tmp_path / f"tree{total}"
        for k in range(total):
            folder = root / "val" / f"n{k % 4:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            os.link(seeds / f"{k % 10}.JPEG", folder / f"{k:05d}.JPEG")
        out = subprocess.run([sys.executable, "-c", script, str(root), model, str(tmp_path / f"o{total}.tsv")],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
        code, kb = out.stdout.split()[-2:]
        assert code == "0", out.stderr
        peaks[total] = int(kb) / 1024
    assert peaks[2000] - peaks[200] < 100, peaks
