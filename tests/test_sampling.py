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


class FakeMemory:
    """Device memory as a GPU reports it around the model calls: the model's weights stay allocated, and
    a call of k rows peaks at ``fixed`` (workspaces) plus ``per_row`` bytes per row (its sizes in ``calls``)."""

    def __init__(self, calls, free, per_row, fixed=0, weights=10_000):
        self.calls, self.free, self.per_row, self.fixed, self.weights = calls, free, per_row, fixed, weights
        self.seen = 0

    def available(self):
        return self.free

    def allocated(self):
        return self.weights

    def reset_peak(self):
        self.seen = len(self.calls)

    def peak(self):
        rows = max(self.calls[self.seen:], default=0)
        return self.weights + (self.fixed + self.per_row * rows if rows else 0)


def test_auto_batch_size_is_a_share_of_free_memory_over_the_measured_bytes_per_row():
    from costsmooth.sampling import AUTO_MEMORY_SHARE, auto_batch_size

    calls = []
    memory = FakeMemory(calls, free=8 * 10**9, per_row=600_000, fixed=50 * 10**6)
    size = auto_batch_size(calls.append, memory)
    assert calls == [16, 16, 64]  # a warm-up, then the two measured calls
    assert size == int(AUTO_MEMORY_SHARE * 8 * 10**9 // 600_000) == 9333  # the fixed 50 MB is not charged per row
    calls.clear()
    assert auto_batch_size(calls.append, FakeMemory(calls, free=2 * 10**9, per_row=600_000)) == 2333
    calls.clear()
    assert auto_batch_size(calls.append, FakeMemory(calls, free=10**5, per_row=600_000)) == 1  # never below 1
    calls.clear()
    assert auto_batch_size(calls.append, FakeMemory(calls, free=10**12, per_row=4), limit=5000) == 5000
    calls.clear()  # nothing grows with the rows: the whole peak is charged to the rows (never divides by 0)
    assert auto_batch_size(calls.append, FakeMemory(calls, free=10**6, per_row=0, fixed=64_000)) == 700


def recording(model, calls: list):
    def record(z):
        calls.append(z.shape[0])
        return model(z)
    return record


def test_auto_batch_size_sizes_the_first_call_from_the_memory_queries(monkeypatch):
    from costsmooth import sampling

    calls = []
    linear = LinearF64(18, 5)
    model = recording(linear, calls)
    memory = FakeMemory(calls, free=10**7, per_row=28_000, fixed=10**6)  # 0.7 * 1e7 / 28000 = 250 rows
    monkeypatch.setattr(sampling, "_FITTING_BATCH", {})
    monkeypatch.setattr(sampling, "device_memory", lambda device: memory)  # as on a GPU
    x = torch.rand(3, 18)
    counts = costsmooth.sample_counts(model, x, 1000, 0.7, seed=3, batch_size="auto")
    assert calls[:3] == [16, 16, 64] and calls[3:] == [250] * 12  # probes, then 3 inputs x 4 calls of 250
    assert torch.equal(counts, costsmooth.sample_counts(linear, x, 1000, 0.7, seed=3, batch_size=97))
    calls.clear()
    costsmooth.sample_counts(model, x, 1000, 0.7, seed=3, batch_size="auto")
    assert calls == [250] * 12  # measured once per model and input shape
    calls.clear()
    costsmooth.sample_counts(model, torch.rand(2, 3, 6), 1000, 0.7, seed=3, batch_size="auto")
    assert calls[:3] == [16, 16, 64]  # another input shape is measured again


def test_auto_batch_size_of_smooth_and_the_sequential_scheduler_is_measured(monkeypatch):
    from costsmooth import sampling
    from .models import Linear2

    calls = []
    model = Linear2([0.6, 0.8], 0.1)
    memory = FakeMemory(calls, free=10**7, per_row=70_000)  # 0.7 * 1e7 / 70000 = 100 rows
    monkeypatch.setattr(sampling, "_FITTING_BATCH", {})
    monkeypatch.setattr(sampling, "device_memory", lambda device: memory)
    X = torch.tensor(np.random.default_rng(1).uniform(-0.8, 0.8, size=(4, 2)))
    auto = costsmooth.Smooth(recording(model, calls), 2, 0.5, seed=4, batch_size="auto")
    results = auto.certify_batch_at(X, 0.3, 0.01, max_n=3000, n0=50)
    assert calls[:3] == [16, 16, 64] and max(calls[3:]) == 100  # the packed calls too: no constant size
    fixed = costsmooth.Smooth(model, 2, 0.5, seed=4, batch_size=100).certify_batch_at(X, 0.3, 0.01, max_n=3000, n0=50)
    for a, b in zip(results, fixed):
        assert (a.decision, a.samples) == (b.decision, b.samples) and np.array_equal(a.counts, b.counts)


def test_auto_batch_size_on_a_cpu_makes_no_probe_calls(monkeypatch):
    from costsmooth import sampling

    calls = []
    monkeypatch.setattr(sampling, "_FITTING_BATCH", {})
    costsmooth.sample_counts(recording(LinearF64(18, 5), calls), torch.rand(3, 18), 1500, 0.7, seed=3,
                             batch_size="auto")
    assert calls == [1000, 500] * 3  # 1000 rows per call


def test_one_options_object_gives_the_counts_of_the_keywords():
    # SamplingOptions carries the settings that Smooth, sample_counts and sample_statistics took one by one:
    # the same settings either way give the same counts and certificates; both ways at once are refused.
    from costsmooth import SamplingOptions
    from costsmooth.sampling import sample_statistics
    x = torch.randn(3, 7, dtype=torch.float64)
    model = LinearF64(7, 5)
    options = SamplingOptions(batch_size=11, dtype=torch.float64)
    by_keywords = costsmooth.sample_counts(model, x, 300, 0.5, seed=4, batch_size=11, dtype=torch.float64)
    assert torch.equal(costsmooth.sample_counts(model, x, 300, 0.5, seed=4, options=options), by_keywords)
    # a keyword given to sample_statistics replaces that field of options
    replaced = sample_statistics(model, x, 300, 0.5, seed=4, options=SamplingOptions(batch_size=2), batch_size=11)
    assert torch.equal(replaced.counts, by_keywords)
    with pytest.raises(TypeError, match=r"either in one SamplingOptions or as keywords, not both; move batch_size "
                                        r"into it: dataclasses.replace\(<your SamplingOptions>, batch_size=5\)$"):
        costsmooth.sample_counts(model, x, 300, 0.5, options=options, batch_size=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch'"):
        sample_statistics(model, x, 300, 0.5, batch=5)
    smooth = costsmooth.Smooth(model, 5, 0.5, options=options, seed=4)
    assert smooth.batch_size == 11 and smooth.dtype == torch.float64 and smooth.device == torch.device("cpu")
    same = costsmooth.Smooth(model, 5, 0.5, batch_size=11, seed=4)
    assert smooth.options == same.options
    a = smooth.certify_batch(x, n0=50, n=300, alpha=0.01, indices=[0, 1, 2])
    b = same.certify_batch(x, n0=50, n=300, alpha=0.01, indices=[0, 1, 2])
    assert [(c.prediction, c.radius) for c in a] == [(c.prediction, c.radius) for c in b]
    with pytest.raises(TypeError, match="not both"):
        costsmooth.Smooth(model, 5, 0.5, options=options, autocast=torch.bfloat16)
    with pytest.raises(TypeError, match="sound mode either in options"):
        costsmooth.Smooth(model, 5, 0.5, options=options, sound=True)
