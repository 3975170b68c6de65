"""The command line end to end: certify (columns, skip/max, resume after a kill), recertify, analyze."""
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from costsmooth import certify_from_counts
from costsmooth.cli import main
from costsmooth.results import read_counts, read_meta, read_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COHEN_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time"]


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(40, 5)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 3  # a few wrong labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(tmp_path / "model.pt"))  # TorchScript: loads without running Python code
    torch.save({"inputs": x, "labels": y, "split": ["test"] * 40}, tmp_path / "data.pt")
    return tmp_path


def certify_args(d, out, *extra):
    return ["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5", str(out), "--N0", "50", "--N", "2000",
            "--alpha", "0.001", "--batch", "4000", *extra]


def rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_tsv(str(path))]


def test_certify_columns_skip_and_max(files, capsys):
    out = files / "out.tsv"
    assert main(certify_args(files, out, "--skip", "3", "--max", "10", "--seed-classes", "0", "--targets", "2")) == 0
    header = open(out).readline().rstrip("\n").split("\t")
    assert header[:6] == COHEN_COLUMNS and "cs_radius" in header
    rows = read_tsv(str(out))
    assert [int(r["idx"]) for r in rows] == [0, 3, 6, 9]
    labels = torch.load(files / "data.pt")["labels"]
    for r in rows:
        assert int(r["label"]) == int(labels[int(r["idx"])])
        assert r["correct"] == str(int(r["predict"] == r["label"]))
        assert (r["cs_radius"] == "") == (r["label"] != "0")  # only seed-class inputs have one
    counts = read_counts(str(out))
    assert sorted(counts) == [0, 3, 6, 9] and sum(counts[0]["estimation"]) == 2000


def test_certificates_do_not_depend_on_skip(files):
    main(certify_args(files, files / "all.tsv", "--max", "7"))
    main(certify_args(files, files / "skip.tsv", "--skip", "3", "--max", "7"))
    full = {r["idx"]: r for r in rows_without_time(files / "all.tsv")}
    for r in rows_without_time(files / "skip.tsv"):
        assert full[r["idx"]] == r


def test_resume_after_kill_loses_and_duplicates_nothing(files):
    out = files / "killed.tsv"
    args = certify_args(files, out, "--seed-classes", "1")
    args[args.index("--N") + 1] = "300000"
    args[args.index("--batch") + 1] = "1000"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "costsmooth", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(read_tsv(str(out))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_tsv(str(out)))
    assert 3 <= done_before < 40, "the run should have been killed part-way"
    with open(out, "a") as f:
        f.write("39\t2\t1\t0.3")  # a row cut short by a kill mid-write
    assert main(args) == 0
    rows = rows_without_time(out)
    assert [int(r["idx"]) for r in rows] == list(range(40))
    reference = files / "reference.tsv"
    main([a if a != str(out) else str(reference) for a in args])
    assert rows == rows_without_time(reference)
    assert sorted(read_counts(str(out))) == list(range(40))


def test_reduced_precision_is_recorded(files):
    out = files / "bf16.tsv"
    assert main(certify_args(files, out, "--max", "3", "--precision", "bf16")) == 0
    assert read_meta(str(out))["precision"] == "bfloat16" and len(read_tsv(str(out))) == 3


def test_resume_refuses_different_settings(files, capsys):
    out = files / "out.tsv"
    main(certify_args(files, out, "--max", "2"))
    assert main(certify_args(files, out, "--max", "2", "--alpha", "0.01")) == 2
    assert "different settings (alpha: 0.001 in the file, 0.01 now)" in capsys.readouterr().err


def test_one_writer_per_outfile(files):
    from costsmooth.results import ResultWriter
    first = ResultWriter(str(files / "locked.tsv"), {"n": 1})
    with pytest.raises(ValueError, match="another costsmooth run is writing"):
        ResultWriter(str(files / "locked.tsv"), {"n": 1})
    first.close()
    ResultWriter(str(files / "locked.tsv"), {"n": 1}).close()
    assert not (files / "locked.tsv.lock").exists()  # no lock file is left behind


def test_recertify_from_saved_counts(files):
    out = files / "out.tsv"
    main(certify_args(files, out, "--max", "12", "--seed-classes", "0"))
    loose = files / "loose.tsv"
    assert main(["recertify", str(out), str(loose), "--alpha", "0.05"]) == 0
    strict_rows, loose_rows = read_tsv(str(out)), read_tsv(str(loose))
    assert [r["idx"] for r in strict_rows] == [r["idx"] for r in loose_rows]
    for s, l in zip(strict_rows, loose_rows):
        assert float(l["radius"]) >= float(s["radius"])
    saved = read_counts(str(out))
    ids = sorted(saved)
    certs = certify_from_counts(np.array([saved[i]["selection"] for i in ids]),
                                np.array([saved[i]["estimation"] for i in ids]), 0.05, 0.5)
    assert [float(r["radius"]) for r in loose_rows] == pytest.approx([c.radius for c in certs], rel=1e-5)
    other = files / "other_cost.tsv"
    assert main(["recertify", str(out), str(other), "--seed-classes", "2"]) == 0
    assert {r["label"] for r in read_tsv(str(other)) if r["cs_radius"]} <= {"2"}


def test_analyze_tables_and_plot(files, capsys):
    out = files / "out.tsv"
    main(certify_args(files, out, "--seed-classes", "1"))
    capsys.readouterr()
    plot = files / "curves.png"
    assert main(["analyze", str(out), str(out), "--radii", "0,0.5", "--classwise", "0.25", "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "rob_cs" in text and "wc_cost" in text and "Class-wise at radius 0.25" in text
    assert plot.stat().st_size > 1000
    table = [line for line in text.splitlines() if line.startswith("|") and "out" in line]
    assert table[0].split("|")[1].strip() == "out#1" and table[0].split("|")[2].strip() == "40"  # name, inputs
    acc0 = float(table[0].split("|")[4])
    rows = read_tsv(str(out))
    assert acc0 == pytest.approx(np.mean([r["correct"] == "1" for r in rows]), abs=1e-3)


def test_bad_files_and_options(files, capsys):
    (files / "junk.pt").write_text("not a model")
    assert main(certify_args(files, files / "o.tsv")[:2] + [str(files / "junk.pt"), "0.5", str(files / "o.tsv")]) == 2
    assert "cannot read model file" in capsys.readouterr().err
    assert main(["certify", str(files / "missing.pt"), str(files / "model.pt"), "0.5", str(files / "o.tsv")]) == 2
    assert "dataset file not found" in capsys.readouterr().err
    assert main(certify_args(files, files / "o.tsv", "--seed-classes", "5")) == 2
    assert "seed class must be an integer in [0, 3)" in capsys.readouterr().err
    bad_cost = files / "cost.csv"
    np.savetxt(bad_cost, np.ones((3, 3)) - np.eye(3) * 0 , delimiter=",")
    assert main(certify_args(files, files / "o.tsv", "--cost", str(bad_cost))) == 2
    assert "zero diagonal" in capsys.readouterr().err


def test_train_then_certify_by_arch_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "breast_cancer", "mlp", str(run), "--loss", "cs_rs", "--seed-classes", "0",
                 "--targets", "1", "--epochs", "2", "--batch", "64", "--loss-arg", "k=2", "--optimizer", "adam",
                 "--lr", "0.001"]) == 0
    assert len(open(run / "log.jsonl").readlines()) == 2
    capsys.readouterr()
    assert main(["train", "breast_cancer", "mlp", str(run), "--loss", "cs_rs", "--seed-classes", "0",
                 "--targets", "1", "--epochs", "1", "--batch", "64", "--loss-arg", "k=2", "--optimizer", "adam",
                 "--lr", "0.001", "--resume"]) == 2  # fewer epochs than were run: refused (more extend the run)
    assert "other settings (epochs: 2 in the checkpoint, 1 now)" in capsys.readouterr().err
    assert main(["train", "breast_cancer", "mlp", str(run), "--loss", "cs_rs", "--seed-classes", "0",
                 "--targets", "1", "--epochs", "2", "--batch", "64", "--loss-arg", "k=2", "--optimizer", "adam",
                 "--lr", "0.001"]) == 2  # an existing run is not overwritten without --resume
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert len(open(run / "log.jsonl").readlines()) == 2
    out = tmp_path / "bc.tsv"
    assert main(["certify", "breast_cancer", str(run / "checkpoint.pt"), "0.25", str(out), "--N0", "20", "--N", "200",
                 "--max", "10", "--seed-classes", "0", "--targets", "1"]) == 0
    rows = read_tsv(str(out))
    assert len(rows) == 10 and all(r["predict"] in ("-1", "0", "1") for r in rows)
    capsys.readouterr()
    assert main(["train", "breast_cancer", "vgg", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert "unknown arch 'vgg'" in capsys.readouterr().err
    assert main(["train", "breast_cancer", "mlp", str(tmp_path / "x"), "--loss", "hinge", "--epochs", "1"]) == 2
    assert "invalid choice: 'hinge'" in capsys.readouterr().err
    assert main(["train", "breast_cancer", "mlp", str(tmp_path / "x"), "--loss", "cs_rs", "--epochs", "1",
                 "--seed-classes", "3"]) == 2
    assert "seed class must be an integer in [0, 2)" in capsys.readouterr().err


def test_analyze_reads_cohen_format_files(tmp_path, capsys):
    path = tmp_path / "cohen.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                    "0\t3\t3\t0.5\t1\t0:00:01\n20\t1\t-1\t0.0\t0\t0:00:01\n40\t2\t2\t0.1\t1\t0:00:01\n")
    assert main(["analyze", str(path), "--radii", "0,0.25"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("|") and "cohen" in line]
    assert [float(r[4]) for r in rows] == [pytest.approx(2 / 3, abs=1e-3), pytest.approx(1 / 3, abs=1e-3)]
    assert [r[5].strip() for r in rows] == ["-", "-"]  # no cost matrix: no Rob_cs


def test_worst_case_cost_variants():
    from costsmooth import CostMatrix, metrics
    from costsmooth.results import Records
    cost = CostMatrix([[0, 2, 3], [0, 0, 0], [0, 0, 0]])
    rows = [{"idx": "0", "label": "0", "predict": "0", "radius": "0.4", "cs_radius": "0.2",
             "target_radii": "1:0.2;2:0.6"},
            {"idx": "1", "label": "0", "predict": "1", "radius": "0.3", "cs_radius": "0", "target_radii": "1:0;2:0"}]
    rec = Records(rows, cost)
    # r = 0.5: input 0 exposes target 1 (cost 2); input 1 (top class is a target) exposes both
    assert metrics.worst_case_cost(rec, 0.5) == pytest.approx((2 + 3) / 2)
    assert metrics.worst_case_cost(rec, 0.5, variant="sum") == pytest.approx((2 + 5) / 2)
    assert metrics.worst_case_cost(rec, 0.1) == pytest.approx((0 + 3) / 2)
    assert metrics.rob_cs(rec, 0.1) == 0.5 and metrics.rob_cs(rec, 0.3) == 0.0
    with pytest.raises(ValueError, match="variant must be"):
        metrics.worst_case_cost(rec, 0.5, variant="mean")


def test_classwise_metrics():
    from costsmooth import CostMatrix, metrics
    from costsmooth.results import Records
    rows = [{"idx": str(i), "label": str(y), "predict": str(p), "radius": str(rad), "cs_radius": cs,
             "target_radii": tr}
            for i, (y, p, rad, cs, tr) in enumerate([(0, 0, 0.5, "0.4", "1:0.4"), (0, 1, 0.2, "0", "1:0"),
                                                      (1, 1, 0.3, "", ""), (1, 1, 0.1, "", "")])]
    cw = metrics.classwise(Records(rows, CostMatrix.pairwise(2, {0: [1]})), 0.25)
    by_class = {c["class"]: c for c in cw["classes"]}
    assert by_class[0]["cert_acc"] == 0.5 and by_class[1]["cert_acc"] == 0.5
    assert by_class[0]["rob_cs"] == 0.5 and by_class[0]["wc_cost"] == 0.5
    assert by_class[0]["acr"] == pytest.approx(0.25) and by_class[1]["acr"] == pytest.approx(0.2)
    assert cw["spread"]["acr"]["worst_class"] == 1 and cw["spread"]["acr"]["gap"] == pytest.approx(0.05)
    assert cw["gap"] == 0.0 and cw["worst"] == 0.5


class _Conv(torch.nn.Module):
    """A small image classifier; ``break_on`` names what it cannot run in (bf16 or channels_last)."""

    def __init__(self, break_on=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.break_on = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 6 * 6, 5), break_on

    def forward(self, x):
        if self.break_on == "channels_last" and not x.is_contiguous():
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        y = self.head(self.conv(x).reshape(x.shape[0], -1))
        return y * float("nan") if self.break_on == "bf16" and y.dtype == torch.bfloat16 else y


def test_gpu_defaults_are_bf16_and_channels_last_where_the_model_runs_in_them():
    from costsmooth.args import default_formats

    x = torch.rand(2, 3, 8, 8)  # CPU autocast runs bf16 too: the same probe a GPU run makes
    assert default_formats(_Conv(), x, bf16=True) == ("bf16", True)
    assert default_formats(_Conv(), x, bf16=False) == ("fp32", True)  # a GPU without bf16
    assert default_formats(_Conv("bf16"), x, bf16=True) == ("fp32", True)  # NaN logits in bf16
    assert default_formats(_Conv("channels_last"), x, bf16=True) == ("bf16", False)
    assert default_formats(_Conv(), x, bf16=True, precision="fp32") == ("fp32", True)  # --precision fp32 kept
    assert default_formats(torch.nn.Linear(6, 3), torch.rand(2, 6), bf16=True) == ("bf16", False)  # not images
    model = _Conv()
    default_formats(model, x, bf16=True)
    assert model.conv.weight.is_contiguous()  # the probe leaves the model's layout as it was


def test_certify_on_a_cpu_keeps_fp32_and_says_so(files, capsys):
    out = files / "fp32.tsv"
    assert main(certify_args(files, out, "--max", "2", "--quiet")) == 0
    assert read_meta(str(out))["precision"] == "float32"
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "model run in fp32, standard layout (fp32 by default on cpu; channels-last off by default on cpu)"


def test_a_resumed_run_keeps_its_precision_by_default(files, capsys):
    out = files / "bf16.tsv"
    assert main(certify_args(files, out, "--max", "2", "--precision", "bf16", "--quiet")) == 0
    assert "model run in bf16 autocast, standard layout (channels-last off by default on cpu); a reduced-precision " \
           "run certifies that model, --precision fp32 the exact one" in capsys.readouterr().out
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 0  # no --precision: bf16 as recorded
    assert "bf16 as in the run resumed" in capsys.readouterr().out and len(read_tsv(str(out))) == 4
    assert main(certify_args(files, out, "--max", "5", "--precision", "fp32", "--quiet")) == 2  # a real change
    assert 'precision: "bfloat16" in the file, "float32" now' in capsys.readouterr().err
