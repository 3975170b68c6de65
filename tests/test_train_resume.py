"""train: checked data before training, and --resume with a larger --epochs extending a run."""
import json

import pytest
import torch

from costsmooth import data
from costsmooth.cli import main
from costsmooth.train import train


def tiny_dataset():
    d = data.load_breast_cancer("train")
    return data.Dataset("bc", d.inputs[:64], d.labels[:64], d.class_names, d.mean, d.std)


def lrs(run_dir):
    return [json.loads(line)["lr"] for line in open(run_dir / "log.jsonl")]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path, schedule):
    ds = tiny_dataset()
    kw = dict(lr=0.05, batch_size=32, seed=1, progress=False, schedule=schedule)
    train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "short"), epochs=3, **kw)
    lines = []
    path = train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "short"), epochs=6, resume=True, log=lines.append, **kw)
    train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "long"), epochs=6, **kw)
    state = torch.load(path, weights_only=False)
    assert state["epoch"] == 6 and state["settings"]["epochs"] == 6
    assert "extending" in lines[0] and "from 3 to 6 epochs" in lines[0]
    short, long = lrs(tmp_path / "short"), lrs(tmp_path / "long")
    assert len(short) == 6
    assert short[3:] == pytest.approx(long[3:], rel=1e-12, abs=0)  # the 6-epoch schedule from epoch 4 on
    assert short[:3] != pytest.approx(long[:3])  # (the first 3 epochs followed the 3-epoch schedule)
    # fewer epochs than the checkpoint, or another setting, is still refused
    with pytest.raises(ValueError, match="epochs: 6 in the checkpoint, 4 now"):
        train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "short"), epochs=4, resume=True, **kw)
    with pytest.raises(ValueError, match="lr: 0.05 in the checkpoint, 0.1 now"):
        train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "short"), epochs=8, resume=True, **dict(kw, lr=0.1))


def test_train_refuses_nan_data_naming_the_input(tmp_path, capsys):
    ds = tiny_dataset()
    inputs = ds.inputs.clone()
    inputs[7, 3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"inputs": inputs, "labels": ds.labels}, path)
    assert main(["train", str(path), "mlp", str(tmp_path / "run"), "--split", "all", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "input 7 of nan.pt contains NaN values" in err and "--lr" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_one_settings_object_trains_as_the_keywords(tmp_path):
    # TrainSettings carries what train took as fifteen keywords: the same settings either way train the same
    # weights and record the same settings; both ways at once are refused.
    from costsmooth.train import TrainSettings
    ds = tiny_dataset()
    by_keywords = train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "kw"), epochs=2, lr=0.05, batch_size=16, seed=3,
                        mixup=1.0, progress=False)
    settings = TrainSettings(epochs=2, lr=0.05, batch_size=16, seed=3, mixup=1.0)
    by_settings = train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "obj"), settings=settings, progress=False)
    a, b = torch.load(by_keywords, weights_only=False), torch.load(by_settings, weights_only=False)
    assert a["settings"] == b["settings"] and a["settings"]["mixup"] == 1.0
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    with pytest.raises(TypeError, match="either in one TrainSettings or as keywords, not both; move epochs, lr"):
        train(ds, "mlp", "gaussian", 0.5, str(tmp_path / "both"), settings=settings, epochs=3, lr=0.1)
