"""Class-wise robustness disparity (costsmooth.fairness): the two-Gaussian study of same-class mixup,
exact class-wise errors of linear models, the fairness report and command."""
import json
import math

import numpy as np
import pytest
import torch

from costsmooth import data
from costsmooth.cli import main
from costsmooth.fairness import (classwise_robustness, disparity, fairness_report, format_report,
                                 linear_classwise_errors, population_optimum, synthetic_study)


def test_same_class_mixup_shrinks_the_robust_error_disparity_of_adversarial_training():
    # The theory (Zhong & Tandon 2024, linear models): mixing inputs of the same class shrinks both class
    # variances by the same factor (2/3 in expectation for alpha = 1), which moves the optimal boundary towards
    # equal class-wise errors. Setting (fairness.SYNTHETIC_DEFAULTS): class spreads 0.5 and 2.0, means +-2 e1,
    # L2 eps 0.5, 1000 inputs per class; chosen so that PGD training alone has a large robust-error disparity
    # (about 0.12) and 30 epochs bring the model to within 0.005 of the population optimum of its loss, where
    # the predicted gap is 0.123 without and 0.104 with mixup. Measured over 5 seeds: 0.1245 and 0.1060, with a
    # seed-to-seed spread of about 0.002 per arm. The margin 0.01 is half the predicted effect and about 5
    # standard errors of the paired difference. The test fails for a no-op mixup (identical runs: difference
    # 0) and for mixing across classes with labels kept (gap 0.220, measured).
    study = synthetic_study(seeds=range(5), trainings=("adversarial",))
    plain, mixed = study["summary"]
    assert not plain["mixup"] and mixed["mixup"]
    assert mixed["robust_gap"] < plain["robust_gap"] - 0.01
    assert mixed["natural_gap"] < plain["natural_gap"]  # the natural-error disparity shrinks too
    # the trained models sit at the population optimum the theory speaks of (training converged)
    for row, mix in ((plain, None), (mixed, 1.0)):
        pop = population_optimum(True, mix)
        assert row["robust_gap"] == pytest.approx(abs(pop["robust"][1] - pop["robust"][0]), abs=0.006)
    assert len(study["runs"]) == 10 and {r["seed"] for r in study["runs"]} == set(range(5))


def test_population_optimum_is_fair_for_equal_spreads_and_mixup_helps_for_unequal_ones():
    for adversarial in (False, True):
        for mix in (None, 1.0):
            # equal spreads: the symmetric boundary, equal class-wise errors, whatever the training
            pop = population_optimum(adversarial, mix, s0=1.0, s1=1.0)
            assert pop["threshold"] == pytest.approx(0.0, abs=1e-5)
            assert pop["robust"][0] == pytest.approx(pop["robust"][1], abs=1e-5)
        plain, mixed = population_optimum(adversarial, None), population_optimum(adversarial, 1.0)
        assert abs(mixed["natural"][1] - mixed["natural"][0]) < abs(plain["natural"][1] - plain["natural"][0])
        strong = population_optimum(adversarial, 8.0)  # larger alpha: lam near 1/2, more variance shrinkage
        assert abs(strong["natural"][1] - strong["natural"][0]) < abs(mixed["natural"][1] - mixed["natural"][0])


def _gaussian_classes(n, mu, s0, s1, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n) % 2
    mean = torch.zeros(dim, dtype=torch.float64)
    mean[0] = mu
    x = torch.randn(2 * n, dim, generator=g, dtype=torch.float64) * torch.where(y == 0, s0, s1).double()[:, None]
    return x + torch.where(y[:, None] == 0, mean, -mean), y, mean


def _linear(weight, bias):
    model = torch.nn.Linear(weight.shape[1], 2).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_exact_linear_errors_match_pgd_on_samples(norm):
    # 20000 inputs per class: the binomial standard error of each rate is at most 0.0035, the tolerance 0.015
    # is more than 4 of them (false failure below 1e-4 per rate; fixed seed, so deterministic)
    model = _linear(torch.tensor([[0.8, 0.3, -0.2], [-0.4, 0.1, 0.2]], dtype=torch.float64),
                    torch.tensor([0.3, -0.1], dtype=torch.float64))
    x, y, mean = _gaussian_classes(20000, 1.5, 0.6, 1.4)
    exact = linear_classwise_errors(model.weight, model.bias, mean, 0.6, 1.4, eps=0.3, norm=norm)
    got = classwise_robustness(model, x, y, eps=0.3, norm=norm, steps=5, batch=8192)
    for c in (0, 1):
        assert got["classes"][c]["natural_error"] == pytest.approx(exact["natural"][c], abs=0.015)
        assert got["classes"][c]["robust_error"] == pytest.approx(exact["robust"][c], abs=0.015)
    assert exact["robust"][1] > exact["natural"][1] + 0.05  # the attack matters here
    assert bool((got["per_input"]["robust"] >= got["per_input"]["natural"]).all())


def test_disparity_of_per_class_errors():
    d = disparity({"a": 0.1, "b": 0.4, "c": 0.25, "d": float("nan")})
    assert d["worst_class"] == "b" and d["worst"] == 0.4 and d["best"] == 0.1
    assert d["gap"] == pytest.approx(0.3) and d["std"] == pytest.approx(np.std([0.1, 0.4, 0.25]))
    assert math.isnan(disparity({})["gap"])


def _toy(tmp_path, n=40):
    x, y, _ = _gaussian_classes(n, 1.0, 0.4, 1.0, dim=2, seed=1)
    ds = data.Dataset("toy", x.float(), y, ["narrow", "wide"])
    model = _linear(torch.tensor([[1.0, 0.2], [-1.0, -0.2]], dtype=torch.float64),
                    torch.tensor([-0.1, 0.1], dtype=torch.float64)).float()
    return ds, model


def test_report_against_the_known_truth_of_a_linear_model(tmp_path):
    # For a linear base model, the smoothed classifier predicts like the model itself and the L2 distance to
    # the boundary is the largest radius at which it is robust; PGD (L2) finds that boundary exactly. So per
    # input: robust error at eps <=> misclassified or distance < eps, and a certified radius never exceeds the
    # distance. A certificate fails with probability <= alpha = 0.001 per input, so with 80 inputs the
    # per-input check below fails with probability <= 0.08 for a correct implementation (fixed seed: it is
    # deterministic, and Clopper-Pearson is conservative, so far less in practice).
    ds, model = _toy(tmp_path)
    sigma, eps = 0.5, 0.3
    report = fairness_report(model, ds, sigma, str(tmp_path / "out"), eps=eps, steps=8, radius=eps, n0=32, n=400,
                             alpha=0.001)
    w = (model.weight[0] - model.weight[1]).detach().double()
    b = float((model.bias[0] - model.bias[1]).detach())
    score = ds.inputs.double() @ w + b
    signed = torch.where(ds.labels == 0, score, -score) / w.norm()  # > 0: correct, its size the distance
    truth_robust = (signed < eps)
    truth_natural = (signed <= 0)
    from costsmooth.results import load_records
    rec = load_records(str(tmp_path / "out" / "certify.tsv"))
    order = np.argsort(rec.idx)
    radius = rec.radius[order]
    correct = (rec.predict == rec.label)[order]
    assert bool((radius[correct] <= signed.numpy()[correct] + 1e-9).all())  # never more than the truth
    for c, row in enumerate(report["classes"]):
        where = ds.labels == c
        assert row["class"] == ds.class_names[c] and row["count"] == int(where.sum())
        assert row["natural_error"] == pytest.approx(float(truth_natural[where].float().mean()))
        assert row["robust_error"] == pytest.approx(float(truth_robust[where].float().mean()))
        assert row["certified_error"] >= row["robust_error"]  # certified error is the conservative one
    d = report["disparity"]["robust_error"]
    assert d["worst_class"] == "wide" and d["gap"] == pytest.approx(abs(report["classes"][1]["robust_error"]
                                                                         - report["classes"][0]["robust_error"]))
    saved = json.loads((tmp_path / "out" / "fairness.json").read_text())
    assert saved["classes"][1]["certified_error"] == pytest.approx(report["classes"][1]["certified_error"])
    text = format_report(report)
    assert "worst class wide" in text and "certified at r = 0.3" in text


def test_smoothed_attack_report_is_reproducible(tmp_path):
    ds, model = _toy(tmp_path, n=12)
    kw = dict(eps=0.3, steps=3, attack="smoothed", sigma=0.5, m=8, seed=2)
    a = classwise_robustness(model, ds.inputs, ds.labels, **kw)
    b = classwise_robustness(model, ds.inputs, ds.labels, **kw)
    assert a["classes"] == b["classes"]
    assert a["robust_error"] >= a["natural_error"]
    with pytest.raises(ValueError, match="needs the noise level sigma"):
        classwise_robustness(model, ds.inputs, ds.labels, eps=0.3, attack="smoothed")
    with pytest.raises(ValueError, match="attack must be"):
        classwise_robustness(model, ds.inputs, ds.labels, eps=0.3, attack="strong")


def test_fairness_command(tmp_path, capsys):
    ds, model = _toy(tmp_path, n=10)
    torch.save({"inputs": ds.inputs, "labels": ds.labels, "class_names": ds.class_names}, tmp_path / "toy.pt")
    torch.save(model, tmp_path / "model.pt")
    out = tmp_path / "f"
    code = main(["fairness", str(tmp_path / "toy.pt"), str(tmp_path / "model.pt"), "--split", "all", "--sigma", "0.5",
                 "--N0", "16", "--N", "100", "--steps", "3", "--out", str(out), "--quiet", "--trust-model-code"])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "max-min gap" in text and "narrow" in text and "wide" in text
    assert (out / "fairness.png").stat().st_size > 1000 and (out / "certify.tsv").exists()
    assert main(["fairness", str(tmp_path / "toy.pt"), str(tmp_path / "model.pt"), "--split", "all"]) == 2
    assert "needs --sigma" in capsys.readouterr().err
    # the order of earlier versions (MODEL DATA) gets a one-line hint, not a run
    assert main(["fairness", str(tmp_path / "model.pt"), str(tmp_path / "toy.pt"), "--split", "all", "--sigma",
                 "0.5"]) == 2
    err = capsys.readouterr().err
    assert "fairness takes DATA then MODEL" in err and len(err.strip().splitlines()) == 1
    assert main(["fairness"]) == 2
    assert "needs DATA and MODEL" in capsys.readouterr().err
    assert main(["fairness", "m.pt", "--synthetic"]) == 2
    assert "--synthetic takes no DATA" in capsys.readouterr().err


def test_fairness_synthetic_command(tmp_path, capsys):
    assert main(["fairness", "--synthetic", "--seeds", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "adversarial" in text and "rob_gap" in text and "pop_rob_gap" in text
    saved = json.loads((tmp_path / "synthetic.json").read_text())
    assert len(saved["runs"]) == 4 and saved["settings"]["seeds"] == [0]
