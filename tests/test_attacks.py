"""PGD (costsmooth.attacks) against linear models, whose worst-case perturbation is known exactly."""
import pytest
import torch

from costsmooth.attacks import pgd, pgd_attack, project, smoothed_pgd_attack
from costsmooth.losses import NoiseSource


def _linear(w, b=0.0):
    model = torch.nn.Linear(w.numel(), 2, bias=True).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([-w, w]))
        model.bias.copy_(torch.tensor([-b, b]))
    return model


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_reaches_the_known_optimum_of_a_linear_objective(norm):
    # max of w.x' over the ball is w.x + eps * ||w||_dual (dual of L2 is L2, of Linf is L1)
    torch.manual_seed(0)
    w = torch.randn(7, dtype=torch.float64)
    x = torch.randn(5, 7, dtype=torch.float64)
    eps = 0.3
    adv = pgd(lambda z: z @ w, x, eps=eps, norm=norm, steps=40, step_size=eps, seed=1)
    dual = w.norm() if norm == "l2" else w.abs().sum()
    assert torch.allclose(adv @ w, x @ w + eps * dual, rtol=0, atol=1e-6)
    size = (adv - x).norm(dim=1) if norm == "l2" else (adv - x).abs().amax(dim=1)
    assert bool((size <= eps + 1e-12).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_never_leaves_the_ball_and_is_reproducible(norm):
    torch.manual_seed(1)
    x = torch.randn(9, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    y = torch.randint(0, 3, (9,))
    a = pgd_attack(model, x, y, eps=0.5, norm=norm, steps=7, seed=3)
    b = pgd_attack(model, x, y, eps=0.5, norm=norm, steps=7, seed=3)
    assert torch.equal(a, b)
    d = (a - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    assert bool((size <= 0.5 * (1 + 1e-5)).all())
    assert model.training  # mode restored


def test_untargeted_pgd_flips_a_linear_classifier_exactly_beyond_its_distance():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ||w|| = 5
    model = _linear(w)
    x = torch.tensor([[1.0, 0.0], [0.2, 0.0]], dtype=torch.float64)  # distances 0.6 and 0.12
    y = torch.tensor([1, 1])
    adv = pgd_attack(model, x, y, eps=0.3, steps=10, random_start=False)
    pred = model(adv).argmax(1)
    assert pred.tolist() == [1, 0]  # only the input closer than eps is flipped


def test_targeted_pgd_moves_towards_the_target():
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    model = _linear(w)
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    adv = pgd_attack(model, x, torch.tensor([0]), eps=1.0, steps=10, random_start=False, targeted=True)
    assert model(adv).argmax(1).item() == 0
    assert float(adv[0, 0]) == pytest.approx(-0.5, abs=1e-9)


def test_keep_constraint_is_never_broken():
    # push w.x up, but only while x'[0] stays below 0.1: the returned point satisfies it
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x = torch.zeros(4, 2, dtype=torch.float64)
    adv = pgd(lambda z: z @ w, x, eps=1.0, steps=10, step_size=0.1, random_start=False,
              keep=lambda z: z[:, 0] < 0.1)
    assert bool((adv[:, 0] < 0.1).all())
    # one step of 0.1 along (1, 1)/sqrt(2) is admissible, the second is not: the first is kept
    assert torch.allclose(adv @ w, torch.full((4,), 0.2 / 2**0.5, dtype=torch.float64))
    adv = pgd(lambda z: z @ w, x, eps=1.0, steps=10, seed=0, keep=lambda z: z[:, 0] < 0.1)
    assert bool((adv[:, 0] < 0.1).all())


def test_smoothed_attack_lowers_the_soft_smoothed_probability_of_the_label():
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    model = _linear(w)
    x = torch.tensor([[0.4, 0.1, 0.0], [0.8, -0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    noise = NoiseSource(seed=0).noise(x, 16, 0.25)
    adv = smoothed_pgd_attack(model, x, y, noise, eps=0.25, steps=10, random_start=False)
    from costsmooth.attacks import soft_smoothed_probs
    before = soft_smoothed_probs(model, x, noise)[:, 1]
    after = soft_smoothed_probs(model, adv, noise)[:, 1]
    assert bool((after < before - 0.05).all())
    # the optimum for a linear model moves straight against w
    direction = (x - adv) / (x - adv).norm(dim=1, keepdim=True)
    assert torch.allclose(direction, (w / w.norm()).expand_as(direction), atol=1e-4)


def test_bad_arguments_name_the_problem():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="norm must be one of"):
        pgd(lambda z: z.sum(1), x, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="eps must be"):
        pgd(lambda z: z.sum(1), x, eps=-1.0)
    with pytest.raises(ValueError, match="one value per input"):
        pgd(lambda z: z.sum(), x, eps=0.1)
    assert torch.equal(pgd(lambda z: z.sum(1), x, eps=0.0), x)
    assert torch.equal(project(torch.ones(1, 4), 1.0, "l2").norm(), torch.tensor(1.0))


# -- adversarial training loss (costsmooth.losses.PGDTraining, train --loss pgd) --------------------------------
def test_pgd_training_loss_is_the_cross_entropy_at_the_attack_point():
    import torch.nn.functional as F
    from costsmooth.losses import LOSSES, PGDTraining, make_loss
    assert LOSSES["pgd"] is PGDTraining
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    loss_fn = make_loss("pgd", 0.25, eps=0.5, steps=4, norm=float("inf"), seed=2)
    assert loss_fn.norm == "linf"
    loss, diag = loss_fn(model, x, y)
    adv = pgd_attack(model, x, y, eps=0.5, norm="linf", steps=4, seed=2 * 1000003)  # the first call's seed
    assert torch.allclose(loss, F.cross_entropy(model(adv), y))
    assert float(loss.detach()) > float(F.cross_entropy(model(x), y).detach())  # the attack raised the loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert loss_fn.state_dict()["calls"] == 1
    clean, _ = PGDTraining(0.25, eps=0.0)(model, x, y)  # eps 0 (start of the eps ramp): plain cross-entropy
    assert torch.allclose(clean, F.cross_entropy(model(x), y))
    noisy, _ = PGDTraining(0.25, eps=0.0, noise=1)(model, x, y)  # noise=1: one Gaussian draw at sigma
    assert not torch.allclose(noisy, clean)
    for bad, match in (({"norm": 3}, "norm must be l2 or linf"), ({"eps": -1.0}, "eps must be"),
                       ({"noise": 2}, "noise must be 0")):
        with pytest.raises(ValueError, match=match):
            PGDTraining(0.25, **bad)


def test_smoothadv_training_attack_is_the_smoothed_pgd_attack_from_x():
    from costsmooth.losses import SmoothAdv
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    model = _linear(w)
    x = torch.tensor([[0.4, 0.1, 0.0], [0.8, -0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    loss = SmoothAdv(0.25, eps=0.5, steps=2, m=4)
    noise = loss.noise.noise(x, 4, 0.25)
    adv = loss.attack(model, x, y, noise)
    # two steps of 2 * eps / T = eps along -w: the full radius, straight against w
    assert torch.allclose((adv - x).norm(dim=1), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.allclose(adv, x - 0.5 * w / w.norm())


def test_norm_names_from_the_command_line():
    from costsmooth.attacks import norm_name
    assert [norm_name(v) for v in ("l2", 2, "2", "linf", float("inf"), "inf")] == ["l2"] * 3 + ["linf"] * 3
    for bad in ("l1", 1, True, None):
        with pytest.raises(ValueError, match="norm must be l2 or linf"):
            norm_name(bad)
