"""Model files: nothing from a file runs unless the user trusts it; Cohen et al.'s published checkpoints
(their layout, ``module.`` wrappers, normalisation from the dataset) give the logits of the model their
code builds; bare state dicts load with an arch; every refusal is one line with exit status 2."""
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from costsmooth import data
from costsmooth.cli import build_parser, main
from costsmooth.models import build_model, load_model, save_checkpoint

from .test_cli_errors import one_line_error

CIFAR = data.NORMALIZATION["cifar10"]
IMAGENET = data.NORMALIZATION["imagenet"]


# -- a malicious file: unpickling it calls os.system --------------------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path):
    """(checkpoint whose unpickling touches MARKER, MARKER, a tabular .pt dataset, a digits-shaped one)."""
    marker = tmp_path / "MARKER"
    torch.save({"arch": "mlp", "state_dict": {}, "epoch": 1, "payload": Payload(marker)}, tmp_path / "evil.pt")
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    torch.save({"inputs": x, "labels": (x[:, 0] > 0).long(), "class_names": ["a", "b"]}, tmp_path / "data.pt")
    return tmp_path / "evil.pt", marker, tmp_path / "data.pt"


UNSAFE = ("holds pickled Python code", "posix.system", "--trust-model-code", "TorchScript", "--arch")


def test_malicious_checkpoint_runs_nothing_in_load_model(evil):
    path, marker, _ = evil
    with pytest.raises(ValueError, match="holds pickled Python code") as err:
        load_model(str(path))
    assert "\n" not in str(err.value) and all(part in str(err.value) for part in UNSAFE)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["certify", "certify --sequential", "calibration", "fairness", "train --init",
                                     "train --resume"])
def test_malicious_checkpoint_runs_nothing_in_any_command(evil, tmp_path, capsys, command):
    path, marker, dataset = evil
    out = tmp_path / "out"
    sampling = ["--N0", "5", "--N", "20", "--split", "all", "--quiet"]
    argv = {
        "certify": ["certify", str(dataset), str(path), "0.25", str(out) + ".tsv"] + sampling,
        "certify --sequential": ["certify", str(dataset), str(path), "0.25", str(out) + ".tsv", "--sequential",
                                 "--radius", "0.1"] + sampling,
        "calibration": ["calibration", str(dataset), str(path), "0.25", str(out)] + sampling,
        "fairness": ["fairness", str(dataset), str(path), "--sigma", "0.25", "--out", str(out)] + sampling,
        "train --init": ["train", str(dataset), "mlp", str(out), "--split", "all", "--epochs", "1", "--quiet",
                         "--init", str(path)],
        "train --resume": ["train", str(dataset), "mlp", str(out), "--split", "all", "--epochs", "1", "--quiet",
                           "--resume"],
    }[command]
    if command == "train --resume":
        out.mkdir()
        os.replace(path, out / "checkpoint.pt")
    assert main(argv) == 2
    one_line_error(capsys, *UNSAFE[:3])
    assert not marker.exists()


def test_recertify_loads_no_model_file():
    """recertify works from saved counts only: no model file is read, so none can run code."""
    args = build_parser().parse_args(["recertify", "run.tsv", "new.tsv"])
    assert not hasattr(args, "base_classifier") and not hasattr(args, "model")


def test_whole_module_loads_only_with_the_opt_in(tmp_path, capsys):
    model = build_model("mlp", 2, (5,), mean=[0.5] * 5, std=[2.0] * 5).eval()
    torch.save(model, tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"holds pickled Python code \(costsmooth.models.Normalize"):
        load_model(str(tmp_path / "module.pt"))
    x = torch.randn(3, 5)
    torch.testing.assert_close(load_model(str(tmp_path / "module.pt"), trust_code=True)(x), model(x))
    torch.manual_seed(0)
    xs = torch.randn(12, 5)
    torch.save({"inputs": xs, "labels": (xs[:, 0] > 0).long()}, tmp_path / "d.pt")
    base = ["certify", str(tmp_path / "d.pt"), str(tmp_path / "module.pt"), "0.5", str(tmp_path / "o.tsv"),
            "--N0", "5", "--N", "20", "--split", "all", "--max", "2", "--quiet"]
    assert main(base) == 2
    one_line_error(capsys, "holds pickled Python code", "--trust-model-code")
    assert not (tmp_path / "o.tsv").exists()
    assert main(base + ["--trust-model-code"]) == 0
    assert "--trust-model-code" in build_parser()._subparsers._group_actions[0].choices["certify"].format_help()


def test_torchscript_and_own_checkpoints_load_without_the_opt_in(tmp_path):
    model = build_model("mlp", 3, (5,), mean=[0.5] * 5, std=[2.0] * 5).eval()
    x = torch.rand(4, 5)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, "mlp", 3, (5,), epoch=3, settings={"lr": 0.1, "cost": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(tmp_path / "script.pt"))
    for name in ("ckpt.pt", "script.pt"):
        torch.testing.assert_close(load_model(str(tmp_path / name)).eval()(x), model(x))
    torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain types only


def test_train_resume_and_init_read_own_checkpoints_safely(tmp_path):
    """costsmooth's own training checkpoints (optimizer, scheduler, loss and mixup state, settings) load with
    torch.load(weights_only=True), so --resume and --init never need the opt-in."""
    from costsmooth.train import train
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    ds = data.Dataset("toy", x, (x[:, 0] > 0).long(), ["a", "b"], [0.0] * 5, [1.0] * 5)
    ckpt = train(ds, "mlp", "gaussian", 0.25, str(tmp_path / "a"), epochs=2, stop_after=1, progress=False,
                 optimizer="adam", mixup=1.0)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "mixup_state" in state
    train(ds, "mlp", "gaussian", 0.25, str(tmp_path / "a"), epochs=2, resume=True, progress=False, optimizer="adam",
          mixup=1.0)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    tuned = train(ds, "mlp", "gaussian", 0.25, str(tmp_path / "b"), epochs=1, progress=False, init=ckpt)
    assert torch.load(tuned, weights_only=True)["settings"]["init_sha256"]


def test_cifar10_batches_unpickle_only_arrays_and_plain_values(tmp_path):
    marker = tmp_path / "MARKER"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"test batch 1",
             b"filenames": [b"a.png", b"b.png"]}
    for protocol in (2, 4):
        with open(tmp_path / "test_batch", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        assert data.load_cifar10(str(tmp_path), "test").labels.tolist() == [1, 2]
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({**batch, b"x": Payload(marker)}, f, protocol=2)
    with pytest.raises(data.DatasetError, match="posix.system, which a CIFAR-10 batch never holds"):
        data.load_cifar10(str(tmp_path), "test")
    assert not marker.exists()


# -- Cohen et al.'s layout: references built as their code builds the models -----------------------------------
class NormalizeLayer(nn.Module):
    """Cohen et al.'s datasets.NormalizeLayer: per-channel constants held as plain attributes (no state)."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        b, c, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


class RefBlock(nn.Module):
    """Residual block with the attribute names of Cohen et al.'s CIFAR ResNet and torchvision's ResNet."""

    def __init__(self, convs, downsample):
        super().__init__()
        for i, (conv, bn) in enumerate(convs, start=1):
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", bn)
        self.n = len(convs)
        self.downsample = downsample

    def forward(self, x):
        out = x
        for i in range(1, self.n + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.n:
                out = torch.relu(out)
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def _conv_bn(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)


class RefResNet(nn.Module):
    """conv1 bn1 [maxpool] layer1..N fc, as Cohen et al.'s cifar ResNet (basic blocks, AvgPool2d(8)) and
    torchvision's resnet50 (bottlenecks, stride on the 3x3 convolution) name and run them."""

    def __init__(self, stem, stages, bottleneck, num_classes):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, stem, 7 if bottleneck else 3, 2 if bottleneck else 1)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if bottleneck else nn.Identity()
        cin = stem
        for s, (width, count, stride) in enumerate(stages, start=1):
            blocks = []
            for b in range(count):
                st, cout = (stride if b == 0 else 1), width * (4 if bottleneck else 1)
                if bottleneck:
                    convs = [_conv_bn(cin, width, 1), _conv_bn(width, width, 3, st), _conv_bn(width, cout, 1)]
                else:
                    convs = [_conv_bn(cin, width, 3, st), _conv_bn(width, width, 3)]
                down = None
                if st != 1 or cin != cout:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, st, bias=False), nn.BatchNorm2d(cout))
                blocks.append(RefBlock(convs, down))
                cin = cout
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.layers = len(stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if bottleneck else nn.AvgPool2d(8)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for s in range(1, self.layers + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(self.pool(x).flatten(1))


def cohen_reference(arch):
    """Sequential(NormalizeLayer, model) as Cohen et al.'s architectures.get_architecture builds it, with
    random weights and batch-norm statistics (so that every parameter matters)."""
    torch.manual_seed(1)
    if arch == "resnet50":
        net = nn.DataParallel(RefResNet(64, [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], True, 1000))
        norm = IMAGENET
    else:
        n = (int(arch[len("cifar_resnet"):]) - 2) // 6
        net, norm = RefResNet(16, [(16, n, 1), (32, n, 2), (64, n, 2)], False, 10), CIFAR
    model = nn.Sequential(NormalizeLayer(*norm), net)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def cohen_checkpoint(path, arch, model):
    """The file Cohen et al.'s train.py writes."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}, path)


@pytest.mark.parametrize("arch,size", [("cifar_resnet20", 32), ("cifar_resnet110", 32), ("resnet50", 32)])
def test_cohen_checkpoints_give_the_logits_of_cohens_model(tmp_path, arch, size):
    ref = cohen_reference(arch)
    path = tmp_path / "checkpoint.pth.tar"
    cohen_checkpoint(path, arch, ref)
    keys = list(ref.state_dict())
    assert keys[0] == ("1.module.conv1.weight" if arch == "resnet50" else "1.conv1.weight")
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        dataset = "imagenet" if arch == "resnet50" else "cifar10"
        got = load_model(str(path), dataset=dataset).eval()(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # from the command line: DATASET's name decides the normalisation
        args = build_parser().parse_args(["certify", f"{dataset}:/data/{dataset}", str(path), "0.25", "o.tsv"])
        from costsmooth.args import model_from_args
        torch.testing.assert_close(model_from_args(args, args.base_classifier, args.dataset).eval()(x), expected,
                                   rtol=0, atol=1e-5)


def test_resnet50_equals_torchvision_where_it_imports(tmp_path):
    try:
        from torchvision.models import resnet50
    except Exception:  # optional: a CPU torch from another index may not load torchvision's compiled ops
        pytest.skip("torchvision does not import")
    torch.manual_seed(0)
    tv = resnet50(num_classes=1000).eval()
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")  # torchvision's weights file: bare, no normalisation
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = tv((x - torch.tensor(IMAGENET[0])[:, None, None]) / torch.tensor(IMAGENET[1])[:, None, None])
        got = load_model(str(tmp_path / "resnet50.pth"), arch="resnet50", dataset="imagenet").eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_wrappers_bare_state_dicts_and_normalisation(tmp_path, capsys):
    torch.manual_seed(0)
    ref = cohen_reference("cifar_resnet20")
    inner = ref[1]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        bare_logits = inner(x)  # no normalisation
        # a bare state dict (no "1." prefix) wrapped twice: module.module.conv1.weight
        torch.save({"module.module." + k: v for k, v in inner.state_dict().items()}, tmp_path / "bare.pt")
        with pytest.raises(ValueError, match="bare state dict .* name its architecture with --arch"):
            load_model(str(tmp_path / "bare.pt"), dataset="cifar10")
        got = load_model(str(tmp_path / "bare.pt"), arch="cifar_resnet20", normalize="none").eval()(x)
        torch.testing.assert_close(got, bare_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(load_model(str(tmp_path / "bare.pt"), arch="cifar_resnet20",
                                              normalize="0.4914,0.4822,0.4465/0.2023,0.1994,0.2010").eval()(x),
                                   ref(x), rtol=0, atol=1e-5)
        # --normalize overrides the dataset's constants
        cohen_checkpoint(tmp_path / "c.pt", "cifar_resnet20", ref)
        torch.testing.assert_close(load_model(str(tmp_path / "c.pt"), dataset="imagenet", normalize="cifar10")(x),
                                   ref(x), rtol=0, atol=1e-5)
    # a checkpoint carrying its own normalisation keeps it, and refuses another
    own = build_model("cifar_resnet20", 10, (3, 32, 32), *CIFAR).eval()
    save_checkpoint(str(tmp_path / "own.pt"), own, "cifar_resnet20", 10, (3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(tmp_path / "own.pt"), dataset="imagenet")(x), own(x))
        load_model(str(tmp_path / "own.pt"), normalize="cifar10")
    with pytest.raises(ValueError, match=r"carries its own input normalisation \(mean \(0.4914.*drop --normalize"):
        load_model(str(tmp_path / "own.pt"), normalize="imagenet")
    # no normalisation anywhere: asked for, not guessed
    with pytest.raises(ValueError, match="carries no input normalisation .* pass --normalize"):
        load_model(str(tmp_path / "c.pt"), dataset="folder:/x")
    # the command line: --arch, --normalize, DATASET
    ds = tmp_path / "d.pt"
    torch.save({"inputs": torch.rand(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}, ds)
    base = ["certify", str(ds), str(tmp_path / "bare.pt"), "0.25", str(tmp_path / "o.tsv"), "--N0", "4", "--N", "8",
            "--split", "all", "--max", "1", "--quiet"]
    assert main(base) == 2
    one_line_error(capsys, "bare state dict", "--arch")
    assert main(base + ["--arch", "cifar_resnet20"]) == 2
    one_line_error(capsys, "carries no input normalisation", "--normalize")
    assert main(base + ["--arch", "cifar_resnet20", "--normalize", "cifar10"]) == 0


def test_published_layout_errors_are_one_line(tmp_path, capsys):
    ref = cohen_reference("cifar_resnet20")
    state = ref.state_dict()
    torch.save({"arch": "vgg16", "state_dict": state, "epoch": 1}, tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match="arch 'vgg16', which costsmooth does not build; expected one of"):
        load_model(str(tmp_path / "vgg.pt"), dataset="cifar10")
    torch.save({"arch": "cifar_resnet110", "state_dict": state, "epoch": 1}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"keys do not fit a cifar_resnet110 model \(missing layer1.3.conv1.weight"):
        load_model(str(tmp_path / "wrong.pt"), dataset="cifar10")
    torch.save({"arch": "cifar_resnet20", "state_dict": {k.replace("conv", "cv"): v for k, v in state.items()}},
               tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"missing conv1.weight.*unexpected cv1.weight"):
        load_model(str(tmp_path / "renamed.pt"), dataset="cifar10")
    cohen_checkpoint(tmp_path / "c.pt", "cifar_resnet20", ref)
    with pytest.raises(ValueError, match="holds a cifar_resnet20 checkpoint, not resnet50"):
        load_model(str(tmp_path / "c.pt"), arch="resnet50", dataset="cifar10")
    # a torch.save'd Cohen module whose classes are not importable here
    fake = types.ModuleType("cohen_datasets")
    klass = type("NormalizeLayer", (nn.Module,), {"forward": lambda self, x: x, "__module__": "cohen_datasets"})
    fake.NormalizeLayer = klass
    sys.modules["cohen_datasets"] = fake
    try:
        torch.save(nn.Sequential(klass(), nn.Linear(2, 2)), tmp_path / "module.pt")
    finally:
        del sys.modules["cohen_datasets"]
    with pytest.raises(ValueError, match=r"pickled Python code \(cohen_datasets.NormalizeLayer"):
        load_model(str(tmp_path / "module.pt"))
    with pytest.raises(ValueError, match="class cannot be imported here .* state dict .* TorchScript"):
        load_model(str(tmp_path / "module.pt"), trust_code=True)
    ds = tmp_path / "d.pt"
    torch.save({"inputs": torch.rand(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}, ds)
    for name, parts in (("vgg.pt", ["vgg16", "expected one of"]), ("wrong.pt", ["missing layer1.3.conv1.weight"]),
                        ("module.pt", ["cannot be imported"])):
        assert main(["certify", str(ds), str(tmp_path / name), "0.25", str(tmp_path / "o.tsv"), "--split", "all",
                     "--normalize", "cifar10", "--trust-model-code", "--quiet"]) == 2
        one_line_error(capsys, *parts)
    assert main(["certify", str(ds), str(tmp_path / "c.pt"), "0.25", "o.tsv", "--arch", "vgg"]) == 2
    one_line_error(capsys, "--arch", "invalid choice")


def test_checkpoints_of_the_previous_layout_still_load(tmp_path):
    """costsmooth's ResNets used to be unnamed Sequentials (keys 1.0.weight, 1.3.shortcut.0.weight, ...):
    those checkpoints are renamed on loading."""
    for arch, shape in (("cifar_resnet20", (3, 32, 32)), ("resnet50", (3, 32, 32))):
        model = build_model(arch, 10, shape, *CIFAR).eval()
        old = {}
        names = _old_names(arch)
        for key, value in model.state_dict().items():
            old[names.get(key, key)] = value
        assert "1.0.weight" in old and "1.conv1.weight" not in old
        torch.save({"arch": arch, "state_dict": old, "arch_kwargs": {"num_classes": 10, "input_shape": list(shape)}},
                   tmp_path / "old.pt")
        x = torch.rand(1, *shape)
        with torch.no_grad():
            torch.testing.assert_close(load_model(str(tmp_path / "old.pt")).eval()(x), model(x))


def _old_names(arch):
    """The previous key of each of today's keys, written out from the previous Sequential layout."""
    if arch == "resnet50":
        stages, first = [3, 4, 6, 3], 4
        inner = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4", "conv3": "body.6",
                 "bn3": "body.7", "downsample": "shortcut"}
    else:
        stages, first, inner = [3, 3, 3], 3, {"downsample": "shortcut"}
    model = build_model(arch, 10, (3, 32, 32))
    out, j = {}, first
    for key in model.state_dict():
        out[key] = key
    for s, count in enumerate(stages, start=1):
        for b in range(count):
            for key in model.state_dict():
                prefix = f"1.layer{s}.{b}."
                if key.startswith(prefix):
                    head, _, rest = key[len(prefix):].partition(".")
                    out[key] = f"1.{j}.{inner.get(head, head)}.{rest}"
            j += 1
    for key in model.state_dict():
        for new, old in (("1.conv1.", "1.0."), ("1.bn1.", "1.1."), ("1.fc.", f"1.{j + 2}.")):
            if key.startswith(new):
                out[key] = old + key[len(new):]
    return out
