"""Datasets from tiny files in each supported layout; architectures; checkpoints; training and resume."""
import gzip
import os
import struct
import warnings

import numpy as np
import pytest
import torch

from costsmooth import CostMatrix, data
from costsmooth.models import ARCHS, build_model, load_model, save_checkpoint
from costsmooth.train import train
from tests.conftest import write_cifar10


def test_embedded_datasets_have_fixed_documented_splits():
    train_d, test_d = data.load_digits("train"), data.load_digits("test")
    assert (len(train_d), len(test_d)) == (1257, 540) and test_d.input_shape == (1, 8, 8)
    assert float(test_d.inputs.min()) >= 0 and float(test_d.inputs.max()) <= 1
    assert torch.equal(data.load_digits("test").inputs, test_d.inputs)
    bc = data.load_breast_cancer("test")
    assert len(bc) == 171 and bc.input_shape == (30,) and bc.class_names == ["malignant", "benign"]
    assert abs(float(data.load_breast_cancer("train").inputs.mean())) < 1e-5  # standardised on the train split
    wine = data.load_wine("test")
    assert len(wine) == 54 and wine.input_shape == (13,) and wine.num_classes == 3
    assert torch.allclose(data.load_wine("train").inputs.std(0, unbiased=False), torch.ones(13), atol=1e-5)


def test_cifar10_layout(tmp_path):
    write_cifar10(tmp_path)
    d = data.load_dataset(f"cifar10:{tmp_path}", "test")
    assert d.inputs.shape == (4, 3, 32, 32) and d.labels.tolist() == [0, 1, 2, 9] and d.num_classes == 10
    assert len(data.load_cifar10(str(tmp_path), "train")) == 20
    os.remove(tmp_path / "test_batch")
    with pytest.raises(data.DatasetError, match="Expected a CIFAR-10 'python version' folder"):
        data.load_cifar10(str(tmp_path), "test")


def write_idx(path, array, magic, compress=False):
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_layout(tmp_path, compress):
    ext = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", np.full((3, 28, 28), 255), 2051, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.array([7, 2, 1]), 2049, compress)
    d = data.load_dataset(f"mnist:{tmp_path}", "test")
    assert d.inputs.shape == (3, 1, 28, 28) and float(d.inputs.max()) == 1.0 and d.labels.tolist() == [7, 2, 1]
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.array([7, 2, 1]), 2051, compress)
    with pytest.raises(data.DatasetError, match="magic number"):
        data.load_mnist(str(tmp_path), "test")
    with pytest.raises(data.DatasetError, match="Expected an MNIST folder"):
        data.load_mnist(str(tmp_path), "train")


def save_image(path, color):
    from PIL import Image
    Image.new("RGB", (10, 12), color).save(path)


def test_ham10000_layout(tmp_path):
    (tmp_path / "part_1").mkdir()
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i, dx in enumerate(["mel", "nv", "bcc", "nv"]):
        save_image(tmp_path / "part_1" / f"ISIC_{i}.jpg", (200, 50 * i, 10))
        rows.append(f"HAM_{i},ISIC_{i},{dx},histo,50,male,back")
    (tmp_path / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    d = data.load_ham10000(str(tmp_path), size=16)
    assert len(d) == 4 and d.take(range(4))[0].shape == (4, 3, 16, 16) and d.num_classes == 7
    assert [d.class_names[c] for c in d.labels] == ["mel", "nv", "bcc", "nv"]
    assert [d.class_names[c] for c in d.extra["malignant_classes"]] == ["akiec", "bcc", "mel"]
    cost = data.ham10000_cost_matrix()
    assert cost.seed_classes == d.extra["malignant_classes"]
    assert [d.class_names[j] for j in cost.targets(d.class_names.index("mel"))] == ["bkl", "df", "nv", "vasc"]
    (tmp_path / "HAM10000_metadata.csv").write_text(rows[0] + "\nHAM_9,ISIC_9,mel,histo,50,male,back\n")
    with pytest.raises(data.DatasetError, match="ISIC_9.jpg not found"):
        data.load_ham10000(str(tmp_path))
    os.remove(tmp_path / "HAM10000_metadata.csv")
    with pytest.raises(data.DatasetError, match="Expected a HAM10000 folder"):
        data.load_ham10000(str(tmp_path))


def test_image_folder_layout(tmp_path):
    for cls, color in (("benign", (0, 0, 255)), ("malignant", (255, 0, 0))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            save_image(tmp_path / cls / f"{i}.png", color)
    d = data.load_dataset(f"folder:{tmp_path}", "all")
    assert d.class_names == ["benign", "malignant"] and d.labels.tolist() == [0, 0, 1, 1]
    x = d.take(range(len(d)))[0]
    assert x.shape == (4, 3, 32, 32) and float(x[2, 0].mean()) == 1.0
    with pytest.raises(data.DatasetError, match="has no test split .* pass --split all"):
        data.load_dataset(f"folder:{tmp_path}")  # no train/test folders: no split to certify
    with pytest.raises(data.DatasetError, match="No images found|no images found"):
        data.load_image_folder(str(tmp_path / "benign"), "all")


def test_image_folder_with_train_and_test_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls, color in (("a", (0, 0, 255)), ("b", (255, 0, 0))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                save_image(tmp_path / split / cls / f"{i}.png", color)
    train, test = (data.load_dataset(f"folder:{tmp_path}", s) for s in ("train", "test"))
    assert len(train) == 6 and len(test) == 4 and test.class_names == ["a", "b"]
    assert test.mean is None  # certifying reads no train image: the model carries its normalisation


def test_pt_dataset_split_and_class_count(tmp_path):
    x, y = torch.randn(5, 3), torch.tensor([0, 2, 2, 0, 2])
    torch.save({"inputs": x, "labels": y, "split": ["train", "test", "train", "test", "test"]}, tmp_path / "s.pt")
    test = data.load_dataset(str(tmp_path / "s.pt"), "test")
    assert test.labels.tolist() == [2, 0, 2] and torch.equal(test.inputs, x[[1, 3, 4]])
    assert data.load_dataset(str(tmp_path / "s.pt"), "train").labels.tolist() == [0, 2]
    assert test.num_classes == 0  # no class_names: the model decides (a subset of classes may be present)
    torch.save({"inputs": x, "labels": y, "split": torch.tensor([0, 1, 0, 1, 1])}, tmp_path / "t.pt")
    assert data.load_dataset(str(tmp_path / "t.pt"), "test").labels.tolist() == [2, 0, 2]
    torch.save({"inputs": x, "labels": y}, tmp_path / "n.pt")
    with pytest.raises(data.DatasetError, match="no 'split' entry, so it has no test split"):
        data.load_dataset(str(tmp_path / "n.pt"))
    with pytest.raises(data.DatasetError, match="dataset file not found"):
        data.load_dataset(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(data.DatasetError, match="junk.pt is not a file written by torch.save"):
        data.load_dataset(str(tmp_path / "junk.pt"), "all")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04" + b"\0" * 40)  # a zip header, then nothing readable
    with pytest.raises(data.DatasetError, match="cannot read dataset file"):
        data.load_dataset(str(tmp_path / "torn.pt"), "all")
    with pytest.raises(data.DatasetError, match="--split all is for folder: and .pt datasets"):
        data.load_dataset("digits", "all")


def test_pt_dataset_and_unknown_names(tmp_path):
    torch.save({"inputs": torch.zeros(2, 3), "labels": torch.tensor([0, 1])}, tmp_path / "d.pt")
    assert len(data.load_dataset(str(tmp_path / "d.pt"), "all")) == 2
    torch.save({"x": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(data.DatasetError, match="'inputs'"):
        data.load_dataset(str(tmp_path / "bad.pt"))
    with pytest.raises(data.DatasetError, match="unknown dataset 'imagenet'"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("arch,shape", [("digits_cnn", (1, 8, 8)), ("mlp", (30,)), ("lenet", (1, 28, 28)),
                                        ("cifar_resnet20", (3, 32, 32)), ("resnet50", (3, 64, 64))])
def test_architectures(arch, shape):
    model = build_model(arch, 7, shape).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, 7)
    assert {"cifar_resnet56", "cifar_resnet110"} <= set(ARCHS)


def test_cifar_resnet110_depth():
    model = build_model("cifar_resnet110", 10, (3, 32, 32))
    convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert convs + 1 == 110  # 109 3x3 convolutions and the final linear layer


def test_model_files(tmp_path):
    model = build_model("mlp", 3, (5,), mean=[0.5] * 5, std=[2.0] * 5).eval()
    x = torch.rand(4, 5)
    expected = model(x)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, "mlp", 3, (5,))
    torch.save(model, tmp_path / "module.pt")  # a pickled module: only with trust_code=True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(tmp_path / "script.pt"))
    cohen = {"arch": "mlp", "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    torch.save(cohen, tmp_path / "cohen.pt")
    for name, kw in (("ckpt.pt", {}), ("module.pt", {"trust_code": True}), ("script.pt", {}),
                     ("cohen.pt", {"num_classes": 3, "input_shape": (5,)})):
        torch.testing.assert_close(load_model(str(tmp_path / name), **kw).eval()(x), expected)
    with pytest.raises(ValueError, match="does not record the mlp model's input shape"):
        load_model(str(tmp_path / "cohen.pt"))
    with pytest.raises(ValueError, match="unknown arch 'vgg'; choose one of"):
        build_model("vgg", 3, (5,))


def tiny_dataset():
    d = data.load_breast_cancer("train")
    return data.Dataset("bc", d.inputs[:96], d.labels[:96], d.class_names, d.mean, d.std)


def test_resumed_training_equals_uninterrupted(tmp_path):
    ds, cost = tiny_dataset(), CostMatrix.pairwise(2, {0: [1]})
    kw = dict(cost=cost, lr=0.05, batch_size=32, seed=3, progress=False, loss_kwargs={"k": 4})
    straight = train(ds, "mlp", "cs_rs", 0.5, str(tmp_path / "a"), epochs=4, **kw)
    train(ds, "mlp", "cs_rs", 0.5, str(tmp_path / "b"), epochs=4, **kw)  # same seed: same weights
    partial = train(ds, "mlp", "cs_rs", 0.5, str(tmp_path / "c"), epochs=4, stop_after=2, **kw)  # interrupted
    state = torch.load(partial, weights_only=False)
    assert state["epoch"] == 2
    resumed = train(ds, "mlp", "cs_rs", 0.5, str(tmp_path / "c"), epochs=4, resume=True, **kw)
    a = torch.load(straight, weights_only=False)["state_dict"]
    c = torch.load(resumed, weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert len(open(tmp_path / "c" / "log.jsonl").readlines()) == 4


def test_training_bad_input(tmp_path):
    ds = tiny_dataset()
    with pytest.raises(ValueError, match="cost matrix must be 2x2"):
        train(ds, "mlp", "cs_rs", 0.5, str(tmp_path), cost=CostMatrix.seedwise(3, [0]), epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown arch"):
        train(ds, "resnet7", "gaussian", 0.5, str(tmp_path), epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train(ds, "mlp", "hinge", 0.5, str(tmp_path), epochs=1, progress=False)
    bad = data.Dataset("bad", ds.inputs[:4], torch.tensor([0, 1, 2, 1]), ds.class_names)
    with pytest.raises(ValueError, match=r"labels of bad must lie in \[0, 2\)"):
        train(bad, "mlp", "gaussian", 0.5, str(tmp_path), epochs=1, progress=False)
