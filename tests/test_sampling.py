"""sample_counts: invariance of the noise to batching, grouping and splitting; noise statistics."""
import numpy as np
import pytest
import scipy.stats
import torch

import costsmooth
from costsmooth import ops

from .conftest import cuda_only


class LinearF64(torch.nn.Module):
    """A linear classifier evaluated in float64, so batch size cannot change any row's argmax."""

    def __init__(self, dim, classes, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(dim, classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1).double() @ self.w.to(x.device)


def counts(device, x, n=1000, **kw):
    model = LinearF64(x[0].numel(), 5)
    return costsmooth.sample_counts(model, x.to(device), n, 0.7, seed=3, **kw)


def test_counts_independent_of_batch_size(device):
    x = torch.rand(4, 2, 3, 3)
    results = [counts(device, x, batch_size=bs) for bs in (1, 7, 1000)]
    assert results[0].sum().item() == 4000
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_counts_independent_of_grouping(device):
    x = torch.rand(5, 18)
    together = counts(device, x, batch_size=3000)
    alone = torch.cat([counts(device, x[i:i + 1], index_offset=i) for i in range(5)])
    assert torch.equal(together, alone)


def test_counts_add_up_when_n_is_split(device):
    x = torch.rand(3, 18)
    whole = counts(device, x, n=1000, batch_size=256)
    split = counts(device, x, n=400, batch_size=256) + counts(device, x, n=600, sample_offset=400, batch_size=256)
    assert torch.equal(whole, split)


def test_different_seed_or_stream_gives_different_counts(device):
    x = torch.rand(3, 18)
    model = LinearF64(18, 5)
    base = costsmooth.sample_counts(model, x.to(device), 1000, 0.7, seed=3)
    assert not torch.equal(base, costsmooth.sample_counts(model, x.to(device), 1000, 0.7, seed=4))
    assert not torch.equal(base, costsmooth.sample_counts(model, x.to(device), 1000, 0.7, seed=3, stream=0))


def test_sample_counts_restores_training_mode_and_packs_inputs():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, z):
            calls.append(z.shape[0])
            return torch.zeros(z.shape[0], 3)

    model = Spy().train()
    c = costsmooth.sample_counts(model, torch.zeros(10, 4), 100, 0.5, batch_size=250)
    assert model.training
    assert calls == [200] * 5  # two inputs of 100 samples per call
    assert c[:, 0].tolist() == [100] * 10


def test_prob_sums_match_counts_for_a_confident_model(device):
    linear = LinearF64(6, 3)
    model = lambda z: 100 * torch.nn.functional.one_hot(linear(z).argmax(1), 3).double()  # softmax ~ one-hot
    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(0)).to(device)
    stats = costsmooth.sample_statistics(model, x, 500, 0.5, prob_sums=True)
    torch.testing.assert_close(stats.prob_sums, stats.counts.double(), atol=1e-9, rtol=0)
    assert stats.counts.sum() == 1000


# Noise statistics over 2^20 draws. The seed is fixed, so each check is deterministic; for a random
# seed the false-failure rates are: KS at p < 1e-3: 0.1%; mean and variance at 5 standard errors and
# each correlation at |r| < 5/sqrt(N): under 1e-6 each.
N_DRAWS = 2**20


def unit_noise(device, batch, n, dim, stream=0, seed=123):
    return ops.noisy_batch(torch.zeros(batch, dim, device=device), n, 1.0, seed=seed, stream=stream).double().cpu()


def test_noise_is_standard_normal(device):
    z = unit_noise(device, 4, 256, 1024).flatten().numpy()
    assert z.size == N_DRAWS
    se = 1 / np.sqrt(z.size)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(scipy.stats.kurtosis(z)) < 5 * np.sqrt(24) * se  # tails of a normal, not of a mixture


def test_noise_uncorrelated_between_inputs_samples_streams_and_neighbours(device):
    z = unit_noise(device, 2, 512, 1024)  # [2 * 512, 1024]
    bound = lambda a, b: abs(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]) < 5 / np.sqrt(a.numel())
    per_input = z.view(2, 512, 1024)
    assert bound(per_input[0], per_input[1])                    # inputs
    assert bound(per_input[:, 0::2], per_input[:, 1::2])        # samples
    other = unit_noise(device, 2, 512, 1024, stream=1)
    assert bound(z, other)                                      # streams
    assert bound(z[:, 0::4], z[:, 1::4]) and bound(z[:, 0::4], z[:, 2::4])  # Box-Muller partners
    assert bound(z[:, :-1], z[:, 1:])                           # neighbouring elements


def out_of_memory_above(rows: int, model, calls: list):
    """``model`` that raises an out-of-memory error on calls of more than ``rows`` rows (sizes in ``calls``)."""
    def fragile(z):
        calls.append(z.shape[0])
        if z.shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model(z)
    return fragile


def test_out_of_memory_halves_the_batch_and_keeps_the_counts():
    linear = LinearF64(18, 5)
    calls = []
    fragile = out_of_memory_above(300, linear, calls)
    x = torch.rand(3, 18)
    expected = costsmooth.sample_counts(linear, x, 1000, 0.7, seed=3, batch_size=250)
    with pytest.warns(UserWarning) as record:
        got = costsmooth.sample_counts(fragile, x, 1000, 0.7, seed=3, batch_size=2000)
    assert [str(w.message) for w in record] == [f"out of memory at batch size {b}; continuing at {b // 2}"
                                                for b in (2000, 1000, 500)]
    assert torch.equal(got, expected)
    assert max(c for c in calls if c <= 300) == 250  # 2000 -> 1000 -> 500 -> 250


def test_autocast_runs_the_model_in_reduced_precision():
    seen = []
    lin = torch.nn.Linear(6, 3)

    def model(z):
        out = lin(z)
        seen.append(out.dtype)
        return out

    c = costsmooth.sample_counts(model, torch.rand(2, 6), 100, 0.5, autocast=torch.bfloat16)
    assert seen and all(d == torch.bfloat16 for d in seen) and c.sum() == 200


@cuda_only
def test_cuda_graph_counts_equal_eager_counts_in_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 8 * 8, 10)).cuda()
    x = torch.rand(5, 3, 8, 8, device="cuda")
    kw = dict(seed=4, batch_size=300)
    eager = costsmooth.sample_counts(model, x, 1000, 0.5, **kw)
    graphed = costsmooth.sample_counts(model, x, 1000, 0.5, cuda_graphs=True, **kw)
    assert torch.equal(eager, graphed) and int(graphed.sum()) == 5000
    packed = costsmooth.sample_counts(model, x, 100, 0.5, cuda_graphs=True, **kw)  # 3 inputs per replay + rest
    assert torch.equal(packed, costsmooth.sample_counts(model, x, 100, 0.5, **kw))


def test_cuda_graphs_need_cuda_inputs():
    with pytest.raises(ValueError, match="cuda_graphs needs inputs on a CUDA device"):
        costsmooth.sample_counts(torch.nn.Linear(3, 2), torch.zeros(1, 3), 10, 0.5, cuda_graphs=True)


def test_auto_batch_size():
    from costsmooth.sampling import AUTO_BATCH_CUDA, resolve_batch_size
    assert resolve_batch_size("auto", "cpu") == 1000 and resolve_batch_size("auto", "cuda") == AUTO_BATCH_CUDA
    assert resolve_batch_size(7, "cpu") == 7
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        resolve_batch_size(0, "cpu")
    c = costsmooth.sample_counts(torch.nn.Linear(3, 2), torch.zeros(2, 3), 50, 0.5, batch_size="auto")
    assert c.sum() == 100


def test_prob_sums_refuse_rows_with_undefined_softmax():
    def model(z):  # a finite argmax for every row, but +inf logits make the softmax undefined
        out = torch.zeros(z.shape[0], 3)
        out[::2, 1] = float("inf")
        return out

    assert costsmooth.sample_counts(model, torch.zeros(2, 4), 10, 0.5)[:, 1].tolist() == [5, 5]
    with pytest.raises(ops.NaNLogitsError, match="10 rows of logits have an undefined softmax"):
        costsmooth.sample_statistics(model, torch.zeros(2, 4), 10, 0.5, prob_sums=True)


def test_auto_batch_size_remembers_what_fitted_after_out_of_memory(monkeypatch):
    from costsmooth import sampling
    linear = LinearF64(18, 5)
    calls = []
    fragile = out_of_memory_above(300, linear, calls)
    monkeypatch.setattr(sampling, "_FITTING_BATCH", {})
    x = torch.rand(2, 18)
    with pytest.warns(UserWarning, match="out of memory at batch size 1000"):
        first = costsmooth.sample_counts(fragile, x, 700, 0.7, seed=3, batch_size="auto")
    calls.clear()
    second = costsmooth.sample_counts(fragile, x, 700, 0.7, seed=3, batch_size="auto")  # no warning now
    assert torch.equal(first, second) and max(calls) <= 300


def test_sample_statistics_validates_dtype_and_channels_last():
    lin = torch.nn.Linear(6, 3)
    with pytest.raises(ValueError, match="channels_last needs image inputs"):
        costsmooth.sample_counts(lin, torch.rand(2, 6), 10, 0.5, channels_last=True)
    with pytest.raises(TypeError, match="dtype must be one of"):
        costsmooth.sample_counts(lin, torch.rand(2, 6), 10, 0.5, dtype=torch.int32)
