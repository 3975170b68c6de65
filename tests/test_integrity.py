"""What the result files and runs around the certificates guarantee: exact radii on disk, no mixing
of models or data on resume, extension without loss, nothing created by a rejected command, no
silent loss of rows or counts, finite training losses, and the sigma the kernels really used."""
import json
import math
import os

import numpy as np
import pytest
import torch

from costsmooth import build_info, certify_from_counts, losses, runs
from costsmooth.certify import conservative_sigma
from costsmooth.cli import main
from costsmooth.cost import CostMatrix
from costsmooth.results import format_row, load_records, read_counts, read_meta, read_tsv

from .test_cli import certify_args, files, rows_without_time  # noqa: F401  (fixture)


# -- radii on disk ---------------------------------------------------------------------------------
def test_written_fields_read_back_exactly_for_random_certificates(tmp_path):
    rng = np.random.default_rng(0)
    cost = CostMatrix.pairwise(5, {0: [1, 2], 3: [4]})
    n = 100000
    sel = rng.multinomial(100, rng.dirichlet(np.ones(5) * 0.3, size=400))
    est = rng.multinomial(n, rng.dirichlet(np.ones(5) * 0.3, size=400))
    labels = rng.integers(0, 5, size=400).tolist()
    certs = certify_from_counts(sel, est, 0.001, 0.25, labels, cost)
    path = tmp_path / "r.tsv"
    from costsmooth.results import COLUMNS
    path.write_text("\t".join(COLUMNS) + "\n" + "".join(format_row(i, c, 0.1) for i, c in enumerate(certs)))
    rows = read_tsv(str(path))
    for row, cert in zip(rows, certs):
        assert float(row["radius"]) == cert.radius and float(row["pA_lower"]) == cert.pA_lower
        if cert.cs_radius is not None:
            assert float(row["cs_radius"]) == cert.cs_radius
        got = {int(j): float(r) for j, r in (p.split(":") for p in filter(None, row["target_radii"].split(";")))}
        assert got == cert.target_radii


def test_a_radius_just_below_a_threshold_is_not_counted_at_it(tmp_path, capsys):
    sel, est = np.array([[100, 0]]), np.array([[84491, 100000 - 84491]])
    cert = certify_from_counts(sel, est, 0.001, 0.25, [0])[0]
    assert 0.2499 < cert.radius < 0.25  # 0.2499997...: '%.6g' wrote it as 0.25
    from costsmooth.results import COLUMNS
    path = tmp_path / "edge.tsv"
    path.write_text("\t".join(COLUMNS) + "\n" + format_row(0, cert, 0.0))
    assert load_records(str(path)).radius[0] < 0.25
    assert main(["analyze", str(path), "--radii", "0.25"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| edge")]
    assert float(table[0].split("|")[4]) == 0.0


def test_certificates_use_the_float32_sigma_the_kernels_draw_with():
    assert conservative_sigma(0.12) == float(np.float32(0.12)) < 0.12
    assert conservative_sigma(0.1) == 0.1  # float32(0.1) is larger: the requested value is kept
    cert = certify_from_counts(np.array([[10, 0]]), np.array([[990, 10]]), 0.001, 0.12)[0]
    from scipy.stats import beta, norm
    p_low = beta.ppf(0.001, 990, 11)
    assert cert.radius == pytest.approx(float(np.float32(0.12)) * norm.ppf(p_low), rel=1e-12)
    assert cert.radius < 0.12 * norm.ppf(p_low)


@pytest.mark.parametrize("sel,est,match", [
    (np.array([[1.5, 0.0]]), np.array([[5, 5]]), "must be integers"),
    (np.array([[3, -1]]), np.array([[5, 5]]), "must be non-negative"),
    (np.array([[0, 0]]), np.array([[5, 5]]), "at least one sample per input; rows \\[0\\] are all zero"),
    (np.array([[3, 1]]), np.array([[0, 0]]), "at least one sample"),
])
def test_certify_from_counts_refuses_bad_counts(sel, est, match):
    with pytest.raises(ValueError, match=match):
        certify_from_counts(sel, est, 0.01, 0.5)


@pytest.mark.parametrize("label", [0.7, True, "1", None])
def test_certify_from_counts_refuses_non_integer_labels(label):
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        certify_from_counts(np.array([[5, 1]]), np.array([[50, 10]]), 0.01, 0.5, [label])


# -- resume: no mixing, extension, recovery ----------------------------------------------------------
def test_resume_refuses_another_model_and_other_data_at_the_same_paths(files, capsys):
    out = files / "out.tsv"
    assert main(certify_args(files, out, "--max", "5")) == 0
    model = torch.jit.load(str(files / "model.pt"))
    with torch.no_grad():
        model.weight.add_(0.01)
    torch.jit.save(model, str(files / "model.pt"))  # retrained into the same file
    capsys.readouterr()
    assert main(certify_args(files, out, "--max", "10")) == 2
    assert "different settings (model_sha256" in capsys.readouterr().err
    assert len(read_tsv(str(out))) == 5
    data = torch.load(files / "data.pt")
    data["inputs"][3] += 1.0
    torch.save(data, files / "data.pt")
    assert main(certify_args(files, out, "--max", "10", "--seed", "0")) == 2
    assert "certified on other data: input 3 was replaced" in capsys.readouterr().err


class Signed(torch.nn.Module):
    """A linear model whose output sign is a plain Python attribute (not in the state_dict)."""

    def __init__(self, sign: float):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(5, 3)
        self.sign = sign

    def forward(self, x):
        return self.sign * self.linear(x)


def test_resume_refuses_a_model_that_differs_only_in_a_python_attribute(files, capsys):
    out = files / "signed.tsv"
    torch.save(Signed(1.0), files / "model.pt")  # a pickled module: loads only with --trust-model-code
    assert main(certify_args(files, out, "--max", "4", "--quiet", "--trust-model-code")) == 0
    torch.save(Signed(-1.0), files / "model.pt")  # same weights, opposite predictions
    capsys.readouterr()
    assert main(certify_args(files, out, "--max", "8", "--quiet", "--trust-model-code")) == 2
    assert "different settings (model_sha256" in capsys.readouterr().err
    assert len(read_tsv(str(out))) == 4


def test_extending_a_run_keeps_its_rows_and_certifies_the_missing_ones(files):
    out, ref = files / "ext.tsv", files / "ref.tsv"
    assert main(certify_args(files, out, "--skip", "2", "--max", "10", "--quiet")) == 0
    first = {r["idx"]: r for r in rows_without_time(out)}
    assert main(certify_args(files, out, "--max", "16", "--quiet")) == 0  # lower skip, higher max
    rows = rows_without_time(out)
    assert [int(r["idx"]) for r in rows] == list(range(16))  # sorted by index
    assert all(first[r["idx"]] == r for r in rows if r["idx"] in first)
    assert (read_meta(str(out))["skip"], read_meta(str(out))["max"]) == (1, 16)  # the metadata follows the extension
    assert main(certify_args(files, ref, "--max", "16", "--quiet")) == 0
    assert rows == rows_without_time(ref)  # same as one uninterrupted run
    assert read_counts(str(out)).keys() == read_counts(str(ref)).keys()


def test_the_metadata_lists_every_device_that_certified_rows(files, monkeypatch):
    out = files / "devices.tsv"
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 0
    here = read_meta(str(out))["devices"]
    assert [(d["type"], d["noise"]) for d in here] == [("cpu", build_info()["cpu_noise"])] and here[0]["name"]
    other = {"type": "cpu", "name": "another CPU", "noise": "scalar"}  # resumed elsewhere
    monkeypatch.setattr(runs, "describe_device", lambda device: other)
    assert main(certify_args(files, out, "--max", "8", "--quiet")) == 0
    assert read_meta(str(out))["devices"] == here + [other]
    assert main(certify_args(files, out, "--max", "12", "--quiet")) == 0  # listed once
    assert read_meta(str(out))["devices"] == here + [other]
    assert len(read_tsv(str(out))) == 12


def test_merged_parts_list_the_devices_of_every_part(files, monkeypatch):
    from costsmooth.distributed import merge_parts

    parts = [files / f"part{k}.tsv" for k in range(2)]
    devices = [{"type": "cuda", "name": f"GPU {k}", "noise": "cuda"} for k in range(2)]
    for k, part in enumerate(parts):
        monkeypatch.setattr(runs, "describe_device", lambda device, k=k: devices[k])
        assert main(certify_args(files, part, "--max", "6", "--shard", f"{k}/2", "--quiet")) == 0
    merge_parts(str(files / "merged.tsv"), [str(p) for p in parts])
    assert read_meta(str(files / "merged.tsv"))["devices"] == devices


def test_rows_whose_counts_were_lost_are_certified_again(files):
    out = files / "lost.tsv"
    assert main(certify_args(files, out, "--max", "6", "--quiet")) == 0
    before = rows_without_time(out)
    os.remove(str(out) + ".counts.jsonl")
    with pytest.warns(UserWarning, match="have no saved counts"):
        assert main(certify_args(files, out, "--max", "6", "--quiet")) == 0
    assert rows_without_time(out) == before and sorted(read_counts(str(out))) == list(range(6))


def test_garbled_rows_are_certified_again_in_index_order(files):
    out = files / "garbled.tsv"
    assert main(certify_args(files, out, "--max", "6", "--quiet")) == 0
    before = rows_without_time(out)
    lines = open(out).read().split("\n")
    lines[3] = lines[3].replace("\t", " ", 2)  # row of index 2 garbled
    open(out, "w").write("\n".join(lines))
    with pytest.warns(UserWarning, match="dropped 1 malformed line"):
        assert main(certify_args(files, out, "--max", "6", "--quiet")) == 0
    assert rows_without_time(out) == before


@pytest.mark.parametrize("bad", [["--sigma-placeholder", "0"], ["--N0", "0"], ["--N", "-5"], ["--alpha", "1.5"],
                                 ["--batch", "0"], ["--skip", "0"], ["--skip", "-1"], ["--max", "0"],
                                 ["--cuda-graphs", "--device", "cpu"], ["--device", "tpu"],
                                 ["--seed", str(2**64)]])
def test_a_rejected_command_creates_no_file_and_the_corrected_one_runs(files, capsys, bad):
    out = files / "o.tsv"
    args = certify_args(files, out, "--max", "3", "--quiet")
    if bad[0] == "--sigma-placeholder":
        args[3] = bad[1]
    else:
        args += bad
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err  # one line
    assert not any(p.name.startswith("o.tsv") for p in files.iterdir())
    assert main(certify_args(files, out, "--max", "3", "--quiet")) == 0


def test_recertify_refuses_missing_counts_unless_asked(files, capsys):
    out = files / "full.tsv"
    assert main(certify_args(files, out, "--max", "8", "--quiet")) == 0
    path = str(out) + ".counts.jsonl"
    lines = open(path).readlines()
    open(path, "w").writelines(lines[:4])
    capsys.readouterr()
    assert main(["recertify", str(out), str(files / "re.tsv"), "--alpha", "0.01"]) == 2
    assert "4 of 8 rows" in capsys.readouterr().err and not (files / "re.tsv").exists()
    assert main(["recertify", str(out), str(files / "re.tsv"), "--alpha", "0.01", "--available-only"]) == 0
    assert len(read_tsv(str(files / "re.tsv"))) == 4
    assert read_meta(str(files / "re.tsv"))["missing_indices"] == [4, 5, 6, 7]


def test_recertify_keeps_inputs_whose_rows_were_garbled(files):
    out = files / "g.tsv"
    assert main(certify_args(files, out, "--max", "6", "--quiet")) == 0
    lines = open(out).read().split("\n")
    lines[3] = lines[3].replace("\t", " ", 2)  # row of index 2 garbled; its counts are saved
    open(out, "w").write("\n".join(lines))
    with pytest.warns(UserWarning, match="recertified from the saved counts"):
        assert main(["recertify", str(out), str(files / "re.tsv"), "--alpha", "0.01"]) == 0
    assert [int(r["idx"]) for r in read_tsv(str(files / "re.tsv"))] == list(range(6))


def test_no_lock_file_is_left_behind(files):
    out = files / "l.tsv"
    assert main(certify_args(files, out, "--max", "2", "--quiet")) == 0
    assert not (files / "l.tsv.lock").exists()


# -- training never goes NaN silently -----------------------------------------------------------------
def test_cs_rs_pairwise_hinge_gradient_is_finite_at_a_denormal_target_probability():
    z = torch.tensor([[0.0, 4.0, -93.0]], requires_grad=True)
    p = z.softmax(-1)
    assert 0 < float(p[0, 2].detach()) < 1e-38  # a float32 denormal
    h, used, _ = losses._hinge(16.0, p[:, 1], p[:, 2], lambda x: x.abs() < 16)
    h.backward()
    assert used == 1 and torch.isfinite(h) and torch.isfinite(z.grad).all()


class _Extreme(torch.nn.Module):
    """Logits of any scale: a linear layer whose output is multiplied by ``scale``."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.lin = torch.nn.Linear(dim, classes)
        self.scale = scale

    def forward(self, x):
        return self.lin(x) * self.scale


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_every_loss_is_finite_with_finite_gradients_for_extreme_logits(name):
    cost = CostMatrix.pairwise(3, {0: [2], 1: [2]})
    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        scale = float(10 ** torch.empty(1).uniform_(0, 3, generator=gen))  # logits up to ~1e3 apart
        torch.manual_seed(trial)
        model = _Extreme(4, 3, scale)
        loss = losses.make_loss(name, 0.25, cost if name in losses.COST_SENSITIVE_LOSSES else None,
                                seed=trial, **({"k": 4} if name == "macer" or name.startswith("cs_rs") else {}))
        x = torch.randn(16, 4, generator=gen) * 3
        y = torch.randint(0, 3, (16,), generator=gen)
        value, diag = loss(model, x, y)
        value.backward()
        assert torch.isfinite(value), (name, trial, scale)
        for p in model.parameters():
            assert torch.isfinite(p.grad).all(), (name, trial, scale)


def test_train_stops_at_a_non_finite_loss_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    from costsmooth import train as train_mod
    from costsmooth.data import load_dataset

    real = train_mod.make_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        inner = loss.__call__

        class Wrapper:
            def __getattr__(self, k):
                return getattr(loss, k)

            def __call__(self, model, x, y):
                calls["n"] += 1
                value, diag = inner(model, x, y)
                return (value * float("nan") if calls["n"] == 9 else value), diag
        return Wrapper()

    monkeypatch.setattr(train_mod, "make_loss", poisoned)
    data = load_dataset("breast_cancer", "train")  # 398 inputs: 7 steps of 64 per epoch
    with pytest.raises(train_mod.TrainingDiverged, match=r"at epoch 2/3, step 2; the checkpoint of epoch 1"):
        train_mod.train(data, "mlp", "gaussian", 0.25, str(tmp_path), epochs=3, batch_size=64, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert len(log) == 1


def test_train_never_saves_a_model_whose_logits_overflow(tmp_path, capsys):
    # lr 1e38: the weights stay finite after the step, the logits do not
    out = tmp_path / "run"
    assert main(["train", "breast_cancer", "mlp", str(out), "--epochs", "1", "--batch", "1000", "--lr", "1e38",
                 "--quiet"]) == 2
    assert "logits are not finite" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()
    assert main(["train", "breast_cancer", "mlp", str(tmp_path / "r2"), "--epochs", "1", "--lr", "1e300",
                 "--quiet"]) == 2
    assert "lr must be a positive number below" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_training_log_is_valid_json_with_null_for_non_finite_values():
    from costsmooth.train import _finite_record
    text = json.dumps(_finite_record({"epoch": 1, "mean_xi": float("nan"), "loss": 0.5}), allow_nan=False)
    assert json.loads(text) == {"epoch": 1, "mean_xi": None, "loss": 0.5}
    assert math.isfinite(json.loads(text)["loss"])
