"""Same-class mixup (costsmooth.mixup): never across classes, Beta weights, exact replay, train --mixup."""
import numpy as np
import pytest
import torch
from scipy import stats

from costsmooth import data
from costsmooth.cli import main
from costsmooth.mixup import SameClassMixup
from costsmooth.train import train


def _class_coded_batch(labels, generator, num_classes):
    """x_i = u_i * e_{y_i} with u_i > 0: an input mixed with another class would get a second nonzero coordinate."""
    u = torch.rand(labels.shape[0], generator=generator, dtype=torch.float64) + 0.5
    return torch.nn.functional.one_hot(labels, num_classes).double() * u[:, None], u


def test_mixup_never_mixes_two_classes_over_many_batches():
    g = torch.Generator().manual_seed(0)
    mixer = SameClassMixup(alpha=1.0, seed=1)
    changed = singles = 0
    for t in range(300):
        b = int(torch.randint(1, 40, (1,), generator=g))
        k = int(torch.randint(2, 12, (1,), generator=g))  # many classes: some have one member, some none
        y = torch.randint(0, k, (b,), generator=g)
        x, u = _class_coded_batch(y, g, k)
        mixed, y_out = mixer(x, y)
        assert y_out is y  # labels unchanged
        assert mixed.shape == x.shape and mixed.dtype == x.dtype
        off_class = mixed.masked_fill(torch.nn.functional.one_hot(y, k).bool(), 0.0)
        assert bool((off_class == 0).all()), f"batch {t} mixed inputs of different classes"
        value = mixed.gather(1, y[:, None]).squeeze(1)
        for c in y.unique():
            members = y == c
            lo, hi = u[members].min(), u[members].max()
            assert bool(((value[members] >= lo - 1e-12) & (value[members] <= hi + 1e-12)).all())
            if int(members.sum()) == 1:
                singles += 1
                assert torch.equal(mixed[members], x[members])  # alone in its class: left as is, bit for bit
        changed += int((mixed != x).any(1).sum())
    assert singles > 50 and changed > 1000  # both cases were exercised, and mixing really happened


def test_partners_are_other_members_of_the_same_class():
    mixer = SameClassMixup(alpha=2.0, seed=3)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 0])
    for _ in range(50):
        partner, lam = mixer.draw(y)
        assert partner.dtype == torch.int64 and lam.dtype == torch.float64
        assert torch.equal(y[partner], y)
        alone = torch.arange(8) == 3
        alone |= torch.arange(8) == 6
        assert torch.equal(partner == torch.arange(8), alone)  # only the single members pair with themselves
        assert bool((lam[alone] == 1.0).all()) and bool(((lam[~alone] > 0) & (lam[~alone] < 1)).all())
        # each class's pairs form one cycle through all its members (every member is someone's partner)
        assert sorted(partner.tolist()) == list(range(8))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_weights_follow_beta_alpha_alpha(alpha):
    # Kolmogorov-Smirnov against Beta(alpha, alpha) on 4000 weights; with a fixed seed the test is
    # deterministic, and for a correct sampler a p-value below 1e-3 has probability 1e-3 (per alpha).
    mixer = SameClassMixup(alpha=alpha, seed=11)
    y = torch.arange(400) % 200  # 200 classes of two members
    lam = torch.cat([mixer.draw(y)[1] for _ in range(10)]).numpy()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_mixing_shrinks_the_class_variance_by_the_predicted_factor():
    # Two independent draws of N(mu, s^2) mixed with lam ~ Beta(a, a): variance (lam^2 + (1-lam)^2) s^2, on
    # average (1 - a / (2a + 1)) s^2 (2/3 for a = 1), mean unchanged. With 40000 inputs the variance ratio has a
    # standard error of about 0.008, so the tolerance of 0.04 is 5 standard errors (false failure ~1e-6).
    g = torch.Generator().manual_seed(5)
    y = torch.arange(40000) % 2
    x = (torch.randn(40000, 1, generator=g, dtype=torch.float64) * torch.where(y == 0, 1.0, 3.0)[:, None]
         + torch.where(y == 0, 2.0, -2.0)[:, None])
    for a in (1.0, 4.0):
        mixed, _ = SameClassMixup(a, seed=0)(x, y)
        for c, s in ((0, 1.0), (1, 3.0)):
            ratio = float(mixed[y == c].var() / x[y == c].var())
            assert ratio == pytest.approx(1 - a / (2 * a + 1), abs=0.04)
            assert float(mixed[y == c].mean()) == pytest.approx(2.0 if c == 0 else -2.0, abs=0.1)


def test_mixup_is_reproducible_and_resumable_from_its_state():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(16, 3, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(6)]
    a, b = SameClassMixup(0.7, seed=4), SameClassMixup(0.7, seed=4)
    first = [a(x, y)[0] for x, y in batches]
    assert all(torch.equal(p, b(x, y)[0]) for p, (x, y) in zip(first, batches))
    c = SameClassMixup(0.7, seed=4)
    for x, y in batches[:3]:
        c(x, y)
    d = SameClassMixup(0.7, seed=0)
    d.load_state_dict(c.state_dict())
    assert all(torch.equal(first[i], d(*batches[i])[0]) for i in range(3, 6))
    other = SameClassMixup(0.7, seed=5)
    assert not torch.equal(first[0], other(*batches[0])[0])
    with pytest.raises(ValueError, match="alpha"):
        SameClassMixup(0.5).load_state_dict(c.state_dict())


def test_gradients_flow_through_the_mixture_and_device_dtype_are_kept():
    x = torch.randn(6, 5, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    mixed, _ = SameClassMixup(1.0, seed=7)(x, y)
    mixed.sum().backward()
    # input i weighs lam_i in its own mixture and 1 - lam_k in the mixture of the member k it is partner of
    partner, lam = SameClassMixup(1.0, seed=7).draw(y)
    expected = lam.clone()
    expected.index_add_(0, partner, torch.where(partner == torch.arange(6), 0.0, 1 - lam))
    assert torch.allclose(x.grad, expected.float()[:, None].expand(6, 5), atol=1e-6)
    assert float(x.grad[5, 0]) == 1.0  # class 2 has one member: passed through
    half, _ = SameClassMixup(1.0)(torch.randn(4, 3).half(), torch.tensor([1, 1, 0, 0]))
    assert half.dtype == torch.float16


def test_mixup_bad_input():
    with pytest.raises(ValueError, match="mixup alpha"):
        SameClassMixup(0.0)
    with pytest.raises(ValueError, match="mixup alpha"):
        SameClassMixup(float("nan"))
    with pytest.raises(ValueError, match="integer class labels"):
        SameClassMixup(1.0)(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="one label per input"):
        SameClassMixup(1.0)(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="float tensor"):
        SameClassMixup(1.0)(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert SameClassMixup(1.0)(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))[0].shape == (0, 2)


def _tiny():
    d = data.load_breast_cancer("train")
    return data.Dataset("bc", d.inputs[:96], d.labels[:96], d.class_names, d.mean, d.std)


@pytest.mark.parametrize("loss,loss_kwargs", [("gaussian", {}), ("pgd", {"eps": 0.5, "steps": 2, "norm": "linf"})])
def test_resumed_training_with_mixup_is_bit_identical(tmp_path, loss, loss_kwargs):
    ds = _tiny()
    kw = dict(lr=0.05, batch_size=32, seed=3, progress=False, loss_kwargs=loss_kwargs, epochs=3, eps_warmup=2)
    straight = train(ds, "mlp", loss, 0.5, str(tmp_path / "a"), mixup=1.0, **kw)
    train(ds, "mlp", loss, 0.5, str(tmp_path / "b"), mixup=1.0, stop_after=1, **kw)  # interrupted after epoch 1
    resumed = train(ds, "mlp", loss, 0.5, str(tmp_path / "b"), mixup=1.0, resume=True, **kw)
    plain = train(ds, "mlp", loss, 0.5, str(tmp_path / "c"), **kw)
    a = torch.load(straight, weights_only=False)
    b = torch.load(resumed, weights_only=False)
    c = torch.load(plain, weights_only=False)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["mixup_state"] == b["mixup_state"] == {"alpha": 1.0, "seed": 3, "step": 9}  # 3 epochs x 3 batches
    assert a["settings"]["mixup"] == 1.0 and c["settings"]["mixup"] is None
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])  # mixup was applied
    with pytest.raises(ValueError, match="mixup: 1.0 in the checkpoint, 0.5 now"):
        train(ds, "mlp", loss, 0.5, str(tmp_path / "b"), mixup=0.5, resume=True, **kw)
    with pytest.raises(ValueError, match="mixup: None in the checkpoint, 1.0 now"):
        train(ds, "mlp", loss, 0.5, str(tmp_path / "c"), mixup=1.0, resume=True, **kw)


def test_train_command_takes_mixup_and_pgd_loss_args(tmp_path, capsys):
    torch.save({"inputs": _tiny().inputs, "labels": _tiny().labels, "class_names": ["a", "b"], "split": ["train"] * 96},
               tmp_path / "d.pt")
    out = tmp_path / "run"
    code = main(["train", str(tmp_path / "d.pt"), "mlp", str(out), "--loss", "pgd", "--mixup", "2", "--epochs", "1",
                 "--loss-arg", "eps=0.25", "--loss-arg", "norm=inf", "--loss-arg", "steps=2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["settings"]["mixup"] == 2.0 and state["settings"]["loss"] == "pgd"
    assert state["settings"]["loss_kwargs"] == {"eps": 0.25, "norm": float("inf"), "steps": 2}
    assert main(["train", str(tmp_path / "d.pt"), "mlp", str(tmp_path / "r2"), "--mixup", "0"]) == 2
    assert "--mixup" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "d.pt"), "mlp", str(tmp_path / "r3"), "--loss", "pgd", "--epochs", "1",
                 "--loss-arg", "norm=3", "--quiet"]) == 2
    assert "norm must be l2 or linf" in capsys.readouterr().err
