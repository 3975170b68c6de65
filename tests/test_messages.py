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
    out = files / "none.tsv"
    assert main(certify_args(files, out, "--quiet")) == 130
    err = capsys.readouterr().err
    assert "no input was finished, so no result file was kept" in err and "are kept" not in err
    assert not out.exists()
    monkeypatch.setattr(train_module, "train", interrupted)
    monkeypatch.setattr("costsmooth.train.train", interrupted)
    assert main(["train", "breast_cancer", "mlp", str(files / "run"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "no epoch finished, so no checkpoint was written" in err
