"""Training losses: finite gradients, hand-computed hinge terms, edge cases, and descent."""
import math

import pytest
import torch
from scipy.stats import norm

from costsmooth import CostMatrix
from costsmooth.losses import (LOSSES, MACER, CSRSPairwise, CSRSSeedwise, GaussianReweighted, NoiseSource,
                               make_loss)


class FixedLogits(torch.nn.Module):
    """Returns the same logits for every noisy copy of input b (ignores the input values)."""

    def __init__(self, logits, k):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))
        self.k = k

    def forward(self, z):
        return self.logits.repeat_interleave(self.k, 0)


def small_problem(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    return model, x, y


COST = CostMatrix.pairwise(3, {0: [1, 2]})


def all_losses(sigma=0.25):
    return [make_loss(name, sigma, COST, seed=1, **({"k": 4} if name == "macer" or name.startswith("cs_rs") else {}))
            for name in LOSSES]


@pytest.mark.parametrize("loss", all_losses(), ids=list(LOSSES))
def test_finite_loss_and_gradients(loss):
    torch.manual_seed(0)
    model, x, y = small_problem()
    value, diag = loss(model, x, y)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(isinstance(v, float) for v in diag.values())


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_decreases_on_a_small_problem(name):
    torch.manual_seed(0)
    model, x, y = small_problem()
    loss = make_loss(name, 0.25, COST, seed=1, **({"k": 4} if name == "macer" or name.startswith("cs_rs") else {}))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def evaluate():  # the same noise every time: the noise counter is rewound
        state = loss.state_dict()
        with torch.no_grad() if name != "smoothadv" else torch.enable_grad():
            value = float(loss(model, x, y)[0].detach())
        loss.load_state_dict(state)
        return value

    before = evaluate()
    for _ in range(60):
        value, _ = loss(model, x, y)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert evaluate() < 0.8 * before


def test_macer_matches_hand_computation():
    # Two inputs, fixed logits: g_hat = softmax(L), g_beta = softmax(beta * L) (all copies equal).
    logits = [[2.0, 1.0, 0.0], [0.1, 0.0, -0.1]]
    y = torch.tensor([0, 1])
    beta, gamma, lam, sigma = 2.0, 8.0, 12.0, 0.5
    loss = MACER(sigma, k=3, beta=beta, gamma=gamma, lam=lam)
    value, diag = loss(FixedLogits(logits, 3), torch.zeros(2, 1), y)
    expected = 0.0
    for row, label in zip(logits, y.tolist()):
        p = torch.tensor(row).softmax(0)
        pb = (beta * torch.tensor(row)).softmax(0).sort(descending=True).values.tolist()
        expected += -math.log(float(p[label]) + 1e-10)
        correct = int(torch.tensor(row).argmax()) == label
        xi = norm.ppf(pb[0]) - norm.ppf(pb[1])
        if correct and xi <= gamma:
            expected += lam * sigma / 2 * (gamma - xi)
    assert float(value.detach()) == pytest.approx(expected / 2, rel=1e-5)
    assert diag["hinge_inputs"] == 1.0  # the second input is misclassified


def test_csrs_seedwise_matches_hand_computation():
    logits = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 2.0]]
    y = torch.tensor([0, 0, 2])  # two seed inputs (one misclassified), one other
    beta, g1, g2, lam, sigma = 1.0, 16.0, 4.0, 3.0, 0.5
    loss = CSRSSeedwise(sigma, COST, k=2, beta=beta, gamma1=g1, gamma2=g2, lambda1=lam)
    value, diag = loss(FixedLogits(logits, 2), torch.zeros(3, 1), y)
    expected = 0.0
    for row, label in zip(logits, y.tolist()):
        p = torch.tensor(row).softmax(0).tolist()
        expected += -math.log(p[label] + 1e-10)
        xi = norm.ppf(p[label]) - norm.ppf(max(v for c, v in enumerate(p) if c != label))
        if label == 0 and abs(xi) < g1:
            expected += lam * sigma / 2 * (g1 - xi)
        elif label != 0 and 0 < xi < g2:
            expected += lam * sigma / 2 * (g2 - xi)
    assert float(value.detach()) == pytest.approx(expected / 3, rel=1e-5)
    assert diag["seed_hinge_inputs"] == 2.0 and diag["other_hinge_inputs"] == 1.0


def test_csrs_pairwise_keeps_a_gradient_when_the_top_class_is_a_target():
    logits = [[0.0, 2.0, 0.5]]  # label 0, top class 1 is a target
    model = FixedLogits(logits, 2)
    value, diag = CSRSPairwise(0.5, COST, k=2, beta=1.0)(model, torch.zeros(1, 1), torch.tensor([0]))
    value.backward()
    assert diag["seed_hinge_inputs"] == 1.0
    assert model.logits.grad[0, 0] < 0 and model.logits.grad[0, 1] > 0  # pushes the label up, the target down


def test_empty_seed_subset_and_non_finite_xi():
    logits = [[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0]]  # g_beta one-hot: xi = +inf, dropped
    y = torch.tensor([1, 1])  # no seed-class input
    model = FixedLogits(logits, 2)
    value, diag = GaussianReweighted(0.5, COST)(torch.nn.Linear(1, 3), torch.zeros(2, 1), y)
    assert torch.isfinite(value) and diag["seed_ce"] == 0.0
    for loss in (MACER(0.5, k=2), CSRSSeedwise(0.5, COST, k=2)):
        value, diag = loss(model, torch.zeros(2, 1), y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(model.logits.grad).all()
        model.logits.grad = None


def test_noise_source_draws_fresh_noise_and_replays_from_state():
    src = NoiseSource(seed=3)
    x = torch.zeros(2, 5)
    a, b = src.draw(x, 2, 1.0), src.draw(x, 2, 1.0)
    assert not torch.equal(a, b)
    replay = NoiseSource(seed=3)
    replay.load_state_dict({"seed": 3, "stream": 2, "counter": 2})
    assert torch.equal(replay.draw(x, 2, 1.0), b)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="unknown loss 'hinge'; choose one of"):
        make_loss("hinge", 0.5)
    with pytest.raises(ValueError, match="needs a cost matrix"):
        make_loss("cs_rs", 0.5)
    model, x, y = small_problem()
    with pytest.raises(ValueError, match="cost matrix must be 3x3"):
        make_loss("cs_rs", 0.5, CostMatrix.seedwise(4, [0]), k=2)(model, x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        make_loss("cs_rs", 0.5, COST, k=2)(model, x, y + 5)
