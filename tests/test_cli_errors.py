"""The command line explains itself: each mistake or fault ends in one line naming the flag or file
(exit status 2, no traceback), or in a warning, and never loses a finished row."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from costsmooth.cli import build_parser, main
from costsmooth.models import build_model, save_checkpoint
from costsmooth.results import read_tsv

from .test_cli import ROOT, certify_args, files  # noqa: F401  (fixture)


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    last = err[-1]
    assert last.startswith(("error:", "costsmooth")) and "Traceback" not in "\n".join(err), err
    for part in parts:
        assert part in last, (part, last)
    return last


def test_model_that_cannot_take_the_inputs(tmp_path, capsys):
    model = build_model("digits_cnn", 10, (1, 8, 8))
    save_checkpoint(str(tmp_path / "cnn.pt"), model, "digits_cnn", 10, (1, 8, 8))
    assert main(["certify", "breast_cancer", str(tmp_path / "cnn.pt"), "0.25", str(tmp_path / "o.tsv"),
                 "--N", "10", "--N0", "5", "--quiet"]) == 2
    one_line_error(capsys, "the model cannot take breast_cancer's inputs of shape [30]")
    assert not (tmp_path / "o.tsv").exists()


class ClassIndices(torch.nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True).long().expand(-1, 3)


def test_model_returning_class_indices_instead_of_logits(files, capsys):
    torch.save(ClassIndices(), files / "idx.pt")
    args = certify_args(files, files / "o.tsv", "--trust-model-code")
    args[2] = str(files / "idx.pt")
    assert main(args) == 2
    one_line_error(capsys, "not class indices")


def test_missing_and_corrupt_model_files(files, capsys):
    args = certify_args(files, files / "o.tsv")
    args[2] = str(files / "nope.pt")
    assert main(args) == 2
    one_line_error(capsys, "model file not found", "nope.pt")
    (files / "bad.pt").write_bytes(b"PK\x03\x04garbage")
    args[2] = str(files / "bad.pt")
    assert main(args) == 2
    one_line_error(capsys, "bad.pt")
    (files / "notes.pt").write_text("inputs,labels\n0.5,1\n")  # a text file named .pt
    args = certify_args(files, files / "o.tsv")
    args[1] = str(files / "notes.pt")
    assert main(args) == 2
    one_line_error(capsys, "notes.pt is not a file written by torch.save")


def test_inf_and_nan_inputs_name_the_index_and_skip_invalid_goes_on(files, capsys):
    data = torch.load(files / "data.pt")
    data["inputs"][2, 1] = float("inf")
    data["inputs"][5, 0] = float("nan")
    torch.save(data, files / "data.pt")
    out = files / "o.tsv"
    assert main(certify_args(files, out, "--max", "8", "--quiet")) == 2
    one_line_error(capsys, "input 2 of data.pt contains infinite values", "--skip-invalid")
    assert main(certify_args(files, out, "--max", "8", "--quiet", "--skip-invalid")) == 0
    rows = {int(r["idx"]): r for r in read_tsv(str(out))}
    assert sorted(rows) == list(range(8))
    assert rows[2]["predict"] == "-1" and float(rows[2]["radius"]) == 0.0 and rows[2]["correct"] == "0"
    assert rows[5]["predict"] == "-1" and rows[3]["predict"] != "-1"
    assert "2 invalid recorded as not certified" in capsys.readouterr().out
    assert main(["recertify", str(out), str(files / "re.tsv"), "--alpha", "0.01"]) == 0
    assert {int(r["idx"]): r["predict"] for r in read_tsv(str(files / "re.tsv"))}[5] == "-1"


def test_truncated_meta_and_bad_counts_lines_name_the_file_and_line(files, capsys):
    out = files / "o.tsv"
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 0
    meta_text = open(str(out) + ".meta.json").read()
    open(str(out) + ".meta.json", "w").write(meta_text[:20])
    capsys.readouterr()
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 2
    one_line_error(capsys, "o.tsv.meta.json is not valid JSON")
    open(str(out) + ".meta.json", "w").write(meta_text)
    counts = open(str(out) + ".counts.jsonl").read().split("\n")
    counts[1] = counts[1][:-5] + "oops"
    open(str(out) + ".counts.jsonl", "w").write("\n".join(counts))
    assert main(["recertify", str(out), str(files / "re.tsv")]) == 2
    one_line_error(capsys, "o.tsv.counts.jsonl, line 2")
    counts[1] = json.dumps({"idx": 1, "label": 0, "selection": [1, 2], "estimation": [3, 4]})
    open(str(out) + ".counts.jsonl", "w").write("\n".join(counts))
    assert main(["recertify", str(out), str(files / "re.tsv")]) == 2
    one_line_error(capsys, "o.tsv.counts.jsonl, line 2: not a counts record (2 classes, but the run has 3")
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 2  # resuming refuses it too
    one_line_error(capsys, "o.tsv.counts.jsonl, line 2: not a counts record (2 classes, but the run has 3")


def test_analyze_reports_skipped_rows_and_refuses_an_empty_plot(files, capsys):
    out = files / "o.tsv"
    assert main(certify_args(files, out, "--max", "5", "--quiet")) == 0
    lines = open(out).read().split("\n")
    parts = lines[2].split("\t")
    parts[3] = "abc"  # a non-numeric radius
    lines[2] = "\t".join(parts)
    open(out, "w").write("\n".join(lines))
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    text = capsys.readouterr().out
    assert "read 4 rows" in text and "skipped 1 malformed line(s): line 3" in text
    empty = files / "empty.tsv"
    empty.write_text(lines[0] + "\n")
    assert main(["analyze", str(empty), "--plot", str(files / "p.png")]) == 2
    one_line_error(capsys, "nothing to plot")


def test_selections_that_make_no_sense_are_refused_or_warned(files, capsys):
    for extra, message in ((["--skip", "-1"], "argument --skip: must be an integer >= 1"),
                           (["--max", "0"], "argument --max"),
                           (["--N", "0"], "argument --N"),
                           (["--alpha", "0"], "argument --alpha: must be a number in (0, 1)"),
                           (["--device", "tpu"], "--device tpu")):
        assert main(certify_args(files, files / "o.tsv", *extra)) == 2
        one_line_error(capsys, message)
    with pytest.warns(UserWarning, match="selects only input 0"):
        assert main(certify_args(files, files / "a.tsv", "--skip", "10", "--max", "5", "--quiet")) == 0
    with pytest.warns(UserWarning, match="--N0 5000 > --N 2000"):
        assert main(certify_args(files, files / "b.tsv", "--N0", "5000", "--max", "2", "--quiet")) == 0
    torch.save({"inputs": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long), "split": []},
               files / "empty.pt")
    args = certify_args(files, files / "c.tsv")
    args[1] = str(files / "empty.pt")
    assert main(args) == 2
    one_line_error(capsys, "empty")
    assert main(["train", "digits", "mlp", str(files / "run"), "--epochs", "0"]) == 2
    one_line_error(capsys, "argument --epochs: must be an integer >= 1")


def test_pt_subset_of_classes_takes_the_class_count_from_the_model(files, capsys):
    data = torch.load(files / "data.pt")
    keep = data["labels"] < 2  # classes 0 and 1 only; the model has 3 outputs
    torch.save({"inputs": data["inputs"][keep], "labels": data["labels"][keep], "split": ["test"] * int(keep.sum())},
               files / "sub.pt")
    args = certify_args(files, files / "o.tsv", "--quiet")
    args[1] = str(files / "sub.pt")
    assert main(args) == 0
    assert len(read_tsv(str(files / "o.tsv"))) == int(keep.sum())


def test_smooth_casts_inputs_to_the_model_dtype():
    from costsmooth import Smooth
    torch.manual_seed(0)
    smooth = Smooth(torch.nn.Linear(4, 3), 3, 0.5)
    pred, radius = smooth.certify(torch.randn(4).double(), 20, 200, 0.01)
    assert pred in (-1, 0, 1, 2) and radius >= 0.0


def test_help_describes_every_option_without_markup():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"
        text = p.format_help()
        assert "``" not in text and ":func:" not in text, name
        if name in ("certify", "train", "analyze"):
            assert "(default:" in text, name


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("costsmooth ")


def test_ctrl_c_keeps_finished_rows_and_says_how_to_resume(files):
    out = files / "int.tsv"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "costsmooth"] + certify_args(files, out, "--N", "400000", "--batch", "100000",
                                                               "--quiet")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # generous: a loaded CI machine starts Python and torch slowly
    while time.time() < deadline and proc.poll() is None and not (out.exists() and len(read_tsv(str(out))) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()[-2000:]
    assert len(read_tsv(str(out))) >= 2, "no two rows were finished within 300 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"interrupted: the finished rows are kept in {out}; run the same command again to resume" in err
    assert "Traceback" not in err
    done = len(read_tsv(str(out)))
    assert done >= 2 and not (files / "int.tsv.lock").exists()


def test_run_sh_resolves_relative_paths_against_the_callers_directory(files):
    assert main(certify_args(files, files / "rel.tsv", "--max", "3", "--quiet")) == 0
    res = subprocess.run([os.path.join(ROOT, "run.sh"), "analyze", "rel.tsv", "--radii", "0"], cwd=files,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "read 3 rows from rel.tsv" in res.stdout


def test_analyze_writes_json_and_csv_for_notebooks(files, capsys):
    import csv
    out = files / "o.tsv"
    assert main(certify_args(files, out, "--max", "6", "--quiet", "--seed-classes", "1")) == 0
    assert main(["analyze", str(out), "--radii", "0,0.5", "--classwise", "0.25", "--json", str(files / "m.json"),
                 "--csv", str(files / "m.csv"), "--plot", str(files / "p.png")]) == 0
    report = json.load(open(files / "m.json"))  # valid JSON: NaN written as null
    assert report["files"][0]["rows"] == 6 and report["files"][0]["sigma"] == 0.5
    assert [r["radius"] for r in report["metrics"]] == [0.0, 0.5] and report["classwise"][0]["radius"] == 0.25
    rows = list(csv.DictReader(open(files / "m.csv")))
    assert [r["n"] for r in rows] == ["6", "6"] and rows[0]["file"] == "o"
    assert os.path.getsize(files / "p.png") > 1000


def test_a_run_shows_progress_in_samples_and_ends_with_a_summary(files, capsys):
    out = files / "p.tsv"
    assert main(certify_args(files, out, "--max", "4")) == 0
    captured = capsys.readouterr()
    assert "sample" in captured.err  # the progress bar counts samples (tqdm, on stderr)
    summary = captured.out.strip().splitlines()
    assert summary[0].startswith(f"wrote {out}: 4 inputs (4 certified now)")
    assert summary[1].startswith("certified accuracy ") and "at r=0.25" in summary[1] and "abstained on" in summary[1]
    assert summary[2].endswith("samples/s)") and "8,200 samples" in summary[2]  # 4 x (50 + 2000)
    assert main(certify_args(files, out, "--max", "4", "--quiet")) == 0
    captured = capsys.readouterr()
    assert "(0 certified now)" in captured.out and "sample" not in captured.err


def test_train_prints_one_line_per_epoch_unless_quiet(tmp_path, capsys):
    assert main(["train", "breast_cancer", "mlp", str(tmp_path / "a"), "--epochs", "2", "--batch", "200"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("loss " in line and "acc " in line and "lr " in line for line in lines)
    assert main(["train", "breast_cancer", "mlp", str(tmp_path / "b"), "--epochs", "2", "--batch", "200",
                 "--quiet"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]


def test_loss_arguments_take_names_and_unknown_ones_are_refused_before_any_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "breast_cancer", "mlp", str(out), "--epochs", "1", "--loss", "pgd",
                 "--loss-arg", "foo=1", "--quiet"]) == 2
    one_line_error(capsys, "loss 'pgd' has no hyper-parameter 'foo'; it takes eps, steps")
    assert main(["train", "breast_cancer", "mlp", str(out), "--epochs", "1", "--loss", "pgd",
                 "--loss-arg", "eps=-1", "--quiet"]) == 2
    one_line_error(capsys, "eps must be a finite number >= 0")
    assert not out.exists()  # a rejected command creates no run directory
    assert main(["train", "breast_cancer", "mlp", str(out), "--epochs", "1", "--loss", "pgd", "--batch", "200",
                 "--loss-arg", "norm=linf", "--loss-arg", "eps=0.1", "--loss-arg", "steps=2", "--quiet"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["settings"]["loss_kwargs"]["norm"] == "linf"


@pytest.mark.parametrize("name, content, parts", [
    ("small.csv", "0,1\n1,0\n", ["small.csv", "must be 3x3", "got 2x2", "one row and one column per class"]),
    ("ragged.csv", "0,1,1\n1,0\n0,0,0\n", ["ragged.csv", "columns changed", "Expected a square CSV"]),
    ("zero.csv", "0,0,0\n0,0,0\n0,0,0\n", ["zero.csv", "no positive entry", "set C[y, j] > 0"]),
    ("neg.csv", "0,-1,0\n0,0,0\n0,0,0\n", ["neg.csv", "non-negative", "row 0, column 1"]),
    ("pairs.json", '{"num_classes": 3, "pairs": [1]}', ["pairs.json", "'pairs' must map each seed class"]),
    ("seeds.json", '{"num_classes": 3, "seed_classes": 1}', ["seeds.json", "'seed_classes' must be a list"]),
])
def test_malformed_cost_matrix_file_is_one_line_naming_the_file_and_the_fix(files, capsys, name, content, parts):
    (files / name).write_text(content)
    out = files / "o.tsv"
    assert main(certify_args(files, out, "--cost", str(files / name), "--quiet")) == 2
    last = one_line_error(capsys, *parts)
    assert "usecols" not in last and ".." not in last  # numpy's advice and a doubled full stop stay out
    assert not out.exists()


def test_seed_or_target_class_outside_the_model_names_the_flag_and_the_class_range(files, capsys):
    assert main(certify_args(files, files / "o.tsv", "--seed-classes", "5", "--quiet")) == 2
    one_line_error(capsys, "--seed-classes 5:", "got 5", "numbered 0 to 2")
    assert main(certify_args(files, files / "o.tsv", "--seed-classes", "0", "--targets", "3", "--quiet")) == 2
    one_line_error(capsys, "--seed-classes 0 --targets 3:", "target class", "numbered 0 to 2")


def test_warnings_of_the_command_line_are_one_line_each_without_source_lines(files):
    # A warning reaches the user as `warning: ...`, not as Python's `path/results.py:612: UserWarning:` with
    # the source line of the warnings.warn call below it.
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "costsmooth"] + certify_args(files, files / "w.tsv", "--skip", "10", "--max", "5",
                                                               "--quiet")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "selects only input 0" in line]
    assert warned and warned[0].startswith("warning: --skip 10 with --max 5 selects only input 0"), res.stderr
    assert "UserWarning" not in res.stderr and "warnings.warn" not in res.stderr and ".py:" not in res.stderr


def test_cost_preset_on_a_dataset_with_other_classes_names_the_preset(files, capsys):
    assert main(certify_args(files, files / "o.tsv", "--cost", "ham10000", "--quiet")) == 2
    one_line_error(capsys, "--cost ham10000: the preset is a cost matrix of 7 classes, and here there are 3")
    assert not (files / "o.tsv").exists()


def test_train_refusing_its_init_file_leaves_no_run_directory(tmp_path, capsys):
    torch.save({"fc.weight": torch.zeros(10, 64)}, tmp_path / "other.pt")  # a state dict of another model
    out = tmp_path / "run"
    assert main(["train", "digits", "digits_cnn", str(out), "--init", str(tmp_path / "other.pt"), "--epochs", "1",
                 "--quiet"]) == 2
    one_line_error(capsys, "--init", "other.pt")
    assert not out.exists()  # a refused command leaves no files


class NaNOnLargeInputs(torch.nn.Module):
    def forward(self, x):
        out = torch.zeros(x.shape[0], 3)
        out[x[:, 0] > 100] = float("nan")
        return out


def test_nan_logits_name_the_dataset_index_of_the_input(files, capsys):
    # The error names the input by its dataset index (what idx counts), not by its place in a model call.
    data = torch.load(files / "data.pt")
    data["inputs"][6, 0] = 1000.0  # finite input; the model's logits on it are NaN
    torch.save(data, files / "data.pt")
    torch.jit.script(NaNOnLargeInputs()).save(str(files / "nan.pt"))
    args = certify_args(files, files / "o.tsv", "--skip", "3", "--max", "10", "--quiet")
    args[2] = str(files / "nan.pt")
    assert main(args) == 2
    one_line_error(capsys, "rows of logits contain NaN (inputs [6])")
