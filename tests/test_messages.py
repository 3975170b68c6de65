"""Messages that say what happened: which cost-matrix entries differ, a class targeting itself, and
what Ctrl-C kept."""
import numpy as np
import pytest

from costsmooth import runs, train as train_module
from costsmooth.cli import main
from costsmooth.results import describe_difference

from .test_cli import certify_args, files  # noqa: F401  (fixture)


def test_resume_with_another_cost_matrix_names_the_entries(files, capsys):
    out = files / "c.tsv"
    assert main(certify_args(files, out, "--quiet", "--max", "2", "--seed-classes", "0", "--targets", "1")) == 0
    capsys.readouterr()
    assert main(certify_args(files, out, "--quiet", "--max", "2", "--seed-classes", "0", "--targets", "2")) == 2
    err = capsys.readouterr().err
    assert "cost matrix entries (row, column) differ: [0,1] 1 in the file, 0 now, [0,2] 0 in the file, 1 now" in err
    big_a, big_b = np.zeros((10, 10)), np.zeros((10, 10))
    big_a[9, 3], big_b[9, 4] = 1, 2
    text = describe_difference("cost", {"matrix": big_a.tolist()}, {"matrix": big_b.tolist()}, "in the file")
    assert "[9,3] 1 in the file, 0 now" in text and "[9,4] 0 in the file, 2 now" in text
    # any other long setting: never two identical shortened texts
    a, b = {"fn": "knn", "points": "x" * 60 + "a"}, {"fn": "knn", "points": "x" * 60 + "b"}
    text = describe_difference("sigma", a, b, "in the file")
    head, tail = text.split(" in the file, ")
    assert "points" in text and head.split(": ")[-1] != tail.replace(" now", "").split(": ")[-1]


def test_a_class_cannot_target_itself(files, capsys):
    assert main(certify_args(files, files / "s.tsv", "--seed-classes", "2", "--targets", "2")) == 2
    err = capsys.readouterr().err
    assert "a class cannot target itself, so seed class 2 has no target" in err
    assert "no class is a seed class" not in err and not (files / "s.tsv").exists()


def test_ctrl_c_before_any_row_says_nothing_was_kept(files, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "certify_dataset", interrupted)
    monkeypatch.setattr("costsmooth.cli.certify_dataset", interrupted)  # the command line imports it at the top
    out = files / "none.tsv"
    assert main(certify_args(files, out, "--quiet")) == 130
    err = capsys.readouterr().err
    assert "no input was finished, so no row was kept" in err and "are kept" not in err
    assert not out.exists()
    monkeypatch.setattr(train_module, "train", interrupted)
    monkeypatch.setattr("costsmooth.train.train", interrupted)
    assert main(["train", "breast_cancer", "mlp", str(files / "run"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "no epoch finished, so no checkpoint was written" in err


def test_split_indices_of_a_pt_file_name_the_file_row(tmp_path, capsys):
    import json

    import torch

    torch.manual_seed(0)
    x = torch.randn(300, 5)
    split = ["train"] * 200 + ["test"] * 100
    x[250, 2] = float("nan")  # row 250 of the file: input 50 of its test split
    torch.save({"inputs": x, "labels": torch.zeros(300, dtype=torch.long), "split": split,
                "class_names": ["a", "b", "c"]}, tmp_path / "data.pt")
    torch.jit.script(torch.nn.Linear(5, 3)).save(str(tmp_path / "model.pt"))
    base = ["certify", str(tmp_path / "data.pt"), str(tmp_path / "model.pt"), "0.5"]
    assert main(base + [str(tmp_path / "a.tsv"), "--N0", "10", "--N", "50", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "input 50 of data.pt (row 250 of the file; indices count within its test split) contains NaN" in err
    out = tmp_path / "b.tsv"
    assert main(base + [str(out), "--N0", "10", "--N", "50", "--quiet", "--max", "3"]) == 0
    meta = json.load(open(str(out) + ".meta.json"))
    assert meta["file_rows"][:3] == [200, 201, 202] and "test split" in meta["idx_counts"]
    torch.save({"inputs": x, "labels": torch.zeros(300, dtype=torch.long), "split": split[::-1],
                "class_names": ["a", "b", "c"]}, tmp_path / "train.pt")  # rows 100..299 train
    assert main(["train", str(tmp_path / "train.pt"), "mlp", str(tmp_path / "run"), "--quiet"]) == 2
    assert "input 150 of train.pt (row 250 of the file; indices count within its train split)" \
        in capsys.readouterr().err
