"""Argument validation shared by the public API. Every error names the problem and the fix."""
from __future__ import annotations

import dataclasses
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
UINT32_MAX = 2**32 - 1


def error_line(err: BaseException) -> str:
    """An exception as one line of text (an OSError with its file name), for ``error: ...`` messages."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer >= minimum (a sample count, a batch size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_alpha(alpha) -> float:
    """A failure probability strictly inside (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be a number in (0, 1) (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def check_seed(seed) -> int:
    """A 64-bit unsigned seed, returned as the signed int64 that carries the same bits."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    seed = int(seed)
    return seed - 2**64 if seed >= 2**63 else seed


def check_index(value, name: str, span: int = 1) -> int:
    """A non-negative index such that value + span - 1 fits in 32 bits (the Philox counter word)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value + max(span, 1) - 1 > UINT32_MAX:
        raise ValueError(f"{name}={value} with {span} items exceeds the 32-bit index range of the noise stream")
    return int(value)


def check_float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float tensor (float32, float64, float16 or bfloat16), got {x.dtype}; "
                        f"convert it with .float()")
    return x


def check_positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_non_negative_finite(value, name: str) -> float:
    """A finite number >= 0 (a radius, an attack's eps, a loss weight), as a float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def sigma_tensor(sigma, batch: int, device) -> torch.Tensor:
    """sigma as a float32 tensor [batch] on `device`, from a number or a [batch] (or 0-d) tensor."""
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() == 0:
            sigma = sigma.reshape(1).expand(batch)
        elif sigma.dim() != 1 or sigma.shape[0] != batch:
            raise ValueError(f"sigma must be a number or a tensor of shape [{batch}] (one per input), "
                             f"got shape {list(sigma.shape)}")
        if not torch.is_floating_point(sigma):
            sigma = sigma.double()
        bad = ~(torch.isfinite(sigma) & (sigma > 0))
        if bool(bad.any()):
            raise ValueError(f"sigma must be positive and finite for every input; got "
                             f"{sigma[bad][:5].tolist()} at positions {bad.nonzero().flatten()[:5].tolist()}")
        return sigma.to(device=device, dtype=torch.float32).contiguous()
    value = check_positive_finite(sigma, "sigma")
    return torch.full((batch,), value, dtype=torch.float32, device=device)


def check_same_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; move both to one device")


def settings_or_keywords(settings, cls, keywords: dict, caller: str):
    """``settings`` (an instance of the frozen dataclass ``cls``), or a ``cls`` of ``keywords`` (the keyword
    conveniences of ``caller``, each at the field's default unless given); refuses both at once, naming the
    keywords given."""
    if settings is None:
        return cls(**keywords)
    if not isinstance(settings, cls):
        raise TypeError(f"{caller}() needs a {cls.__module__}.{cls.__name__}, got {type(settings).__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    given = sorted(k for k, v in keywords.items() if v != defaults[k])
    if given:
        raise TypeError(f"{caller}() takes its settings either in one {cls.__name__} or as keywords, not both; "
                        f"move {', '.join(given)} into it: dataclasses.replace(<your {cls.__name__}>, "
                        f"{', '.join(f'{k}={keywords[k]!r}' for k in given)})")
    return settings
