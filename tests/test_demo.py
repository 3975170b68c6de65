"""The demo end to end on the embedded breast-cancer data (shortened: one epoch, few samples)."""
import hashlib
import os

from costsmooth import demo
from costsmooth.results import read_meta, read_tsv


def test_demo_writes_four_certified_runs_and_compares_them(tmp_path, monkeypatch, capsys):
    settings = dict(demo.DEMO_SETTINGS["breast_cancer"], quick_epochs=1, quick_n=64, n0=16, epochs=2, n=48)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "breast_cancer", settings)
    rows = demo.run_demo("breast_cancer", str(tmp_path), quick=True, progress=False)
    out = capsys.readouterr().out
    quick = tmp_path / "quick"  # kept apart from the full run's results
    for name in ("gaussian", "gaussian_r", "macer", "cs_rs"):
        tsv = quick / f"{name}.tsv"
        records = read_tsv(str(tsv))
        assert len(records) == 171
        assert all((r["cs_radius"] != "") == (r["label"] == "0") for r in records)  # malignant is the seed
        assert read_meta(str(tsv))["n"] == 64
        assert name in out
    assert {r["file"] for r in rows} == {"gaussian", "gaussian_r", "macer", "cs_rs"}
    assert os.path.getsize(quick / "curves.png") > 1000
    assert "Class-wise at radius" in out
    # re-running reuses the finished checkpoints and certificates
    demo.run_demo("breast_cancer", str(tmp_path), quick=True, progress=False)
    assert len(read_tsv(str(quick / "cs_rs.tsv"))) == 171


def test_full_demo_after_quick_demo_trains_and_certifies_afresh(tmp_path, monkeypatch):
    settings = dict(demo.DEMO_SETTINGS["breast_cancer"], quick_epochs=1, quick_n=32, n0=16, epochs=2, n=48)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "breast_cancer", settings)
    demo.run_demo("breast_cancer", str(tmp_path), quick=True, progress=False)
    demo.run_demo("breast_cancer", str(tmp_path), quick=False, progress=False)
    import torch
    for name in ("gaussian", "cs_rs"):
        assert read_meta(str(tmp_path / f"{name}.tsv"))["n"] == 48
        assert read_meta(str(tmp_path / "quick" / f"{name}.tsv"))["n"] == 32
        ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        assert ckpt["epoch"] == 2 and ckpt["settings"]["epochs"] == 2
    # CS-RS fine-tunes the full run's own Gaussian model
    init = torch.load(tmp_path / "cs_rs" / "checkpoint.pt", weights_only=False)["settings"]["init_sha256"]
    assert init == hashlib.sha256((tmp_path / "gaussian" / "checkpoint.pt").read_bytes()).hexdigest()
