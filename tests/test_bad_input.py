"""Bad input to the engine: each gives an error that names the problem."""
import pytest
import torch

import costsmooth
from costsmooth import ops


@pytest.mark.parametrize("sigma,match", [(0.0, "sigma must be a positive"), (-1.0, "sigma must be a positive"),
                                         (float("nan"), "sigma must be a positive"),
                                         (float("inf"), "sigma must be a positive"),
                                         (torch.tensor([0.5, 0.0]), "positive and finite for every input"),
                                         (torch.tensor([0.5, 0.5, 0.5]), r"shape \[2\]")])
def test_bad_sigma(sigma, match):
    with pytest.raises(ValueError, match=match):
        ops.noisy_batch(torch.zeros(2, 3), 4, sigma, seed=0)


@pytest.mark.parametrize("n", [0, -3])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        ops.noisy_batch(torch.zeros(2, 3), n, 0.5, seed=0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        ops.vote_count(torch.zeros(4, 3), n)


def test_n_must_be_an_integer():
    with pytest.raises(TypeError, match="n must be an integer"):
        ops.noisy_batch(torch.zeros(2, 3), 2.5, 0.5, seed=0)


def test_non_float_inputs():
    with pytest.raises(TypeError, match="x must be a float tensor"):
        ops.noisy_batch(torch.zeros(2, 3, dtype=torch.int64), 2, 0.5, seed=0)
    with pytest.raises(TypeError, match="logits must be a float tensor"):
        ops.vote_count(torch.zeros(4, 3, dtype=torch.int32), 2)


def test_logits_of_wrong_rank():
    with pytest.raises(ValueError, match="logits must be 2-d"):
        ops.vote_count(torch.zeros(4, 3, 2), 2)
    with pytest.raises(ValueError, match="not a multiple of n"):
        ops.vote_count(torch.zeros(5, 3), 2)


def test_counts_of_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"counts must have shape \[2, 3\]"):
        ops.vote_count(torch.zeros(4, 3), 2, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="counts must be a torch.int64 tensor"):
        ops.vote_count(torch.zeros(4, 3), 2, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="sums must be a torch.float64 tensor"):
        ops.prob_sum(torch.zeros(4, 3), 2, torch.zeros(2, 3))


def test_tensors_on_different_devices():
    meta = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="logits is on cpu but counts is on meta"):
        ops.vote_count(torch.zeros(4, 3), 2, meta)


def test_direct_op_call_is_checked_too():
    with pytest.raises(RuntimeError, match="n must be >= 1"):
        torch.ops.costsmooth.noisy_batch(torch.zeros(2, 3), torch.ones(2), 0, 0, 0, 0, 0, torch.float32, False)
    with pytest.raises(RuntimeError, match="accumulator must have shape"):
        torch.ops.costsmooth.vote_count_(torch.zeros(4, 3), torch.zeros(3, 3, dtype=torch.int64), 2)


def test_bad_seed_and_offsets():
    with pytest.raises(ValueError, match="seed must be an integer in"):
        ops.noisy_batch(torch.zeros(2, 3), 2, 0.5, seed=-1)
    with pytest.raises(ValueError, match="exceeds the 32-bit index range"):
        ops.noisy_batch(torch.zeros(2, 3), 2, 0.5, seed=0, index_offset=2**32 - 1)


def test_sample_counts_rejects_bad_models_and_inputs():
    model = torch.nn.Linear(3, 4)
    with pytest.raises(ValueError, match="returns 4 logits per input but num_classes=5"):
        costsmooth.sample_counts(model, torch.zeros(2, 3), 10, 0.5, num_classes=5)
    with pytest.raises(ValueError, match="x contains NaN"):
        costsmooth.sample_counts(model, torch.full((2, 3), float("nan")), 10, 0.5)
    with pytest.raises(ValueError, match="logits"):
        costsmooth.sample_counts(torch.nn.Flatten(0), torch.zeros(2, 3), 10, 0.5)
    nan_model = lambda z: torch.full((z.shape[0], 4), float("nan"))
    with pytest.raises(ops.NaNLogitsError, match="contain NaN"):
        costsmooth.sample_counts(nan_model, torch.zeros(2, 3), 10, 0.5)
