"""What the noise generators draw, and the probability a certificate is charged for the difference.

A certificate bounds probabilities under the smoothing law (the Gaussian). The Monte Carlo counts
estimate probabilities under the law the generator actually draws. If the two laws differ by at most
``charge`` in total variation, every event's probability differs by at most ``charge``, so a lower
bound on the drawn law minus ``charge`` is a lower bound on the Gaussian one, and an upper bound plus
``charge`` is an upper bound (``costsmooth.certify`` applies it to every bound). The Philox words are
taken as independent uniform words, as in every Monte Carlo method.

Standard path (``noisy_batch``): Box-Muller in float32. Its smallest uniform is
``word_to_uniform(0) = 2^-33``, so the radius of each Gaussian pair is cut off at
``sqrt(-2 ln 2^-33)`` (6.76): the Gaussian puts mass ``exp(-r^2 / 2) = 2^-33`` beyond it, per pair.
With ``ceil(d / 2)`` pairs per sample of ``d`` coordinates, the union bound charges
``ceil(d / 2) * 2^-33`` (``gaussian_charge``; 8.8e-6 for an ImageNet input). What this does not
cover: the drawn values are float32 numbers, a discrete law, and a base classifier can tell them
apart from Gaussian ones (Voracek and Hein, ICLR 2023). That is the common practice's caveat.

Sound path (``noisy_batch(..., grid=h)``, Voracek and Hein's procedure): the inputs lie on a grid of
step ``h``, and the base classifier is given the grid point ``(m + k) * h`` of the cell that
``x + delta`` falls in: the cell offset ``k = round(delta / h)`` of each coordinate has the law
``P(k) = Phi((k + 1/2) h / sigma) - Phi((k - 1/2) h / sigma)``, independently across coordinates.
The kernels draw ``k`` by comparing a 64-bit uniform integer ``U`` with integer thresholds
``T_c = round(2^64 F(k_c))``, ``F(k) = Phi((k + 1/2) h / sigma)``, computed here once in 128-bit
arithmetic (mpmath): the drawn law ``Q`` gives cell ``c`` probability ``(T_c - T_{c-1}) / 2^64``
exactly, and the cells beyond the table (``|k| > M``, mass below 2^-70) go to the end cells. The
total variation ``TV(Q, P) = 1/2 sum_k |Q(k) - P(k)|`` (tails included) is computed from the table
and rounded up (``CellTable.tv``, about ``cells * 2^-65``); for ``d`` independent coordinates
``TV(Q^d, P^d) <= d TV(Q, P)`` (a coupling per coordinate and the union bound), the charge of one
sample. Then the counts estimate probabilities of ``f o q`` under the exact Gaussian law up to that
charge, and Cohen et al.'s theorem, which holds for any base classifier, gives a certificate for
the smoothed ``f o q`` at the real grid point ``m * h`` that floating point cannot break.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["DEFAULT_GRID", "U_MIN", "CellTable", "cell_table", "grid_cells", "gaussian_charge", "sound_charge",
           "noise_charge", "format_grid", "parse_grid"]

DEFAULT_GRID = 1 / 255  # 8-bit images
U_MIN = 2.0**-33  # the smallest uniform word_to_uniform returns ((0 + 0.5) * 2^-32): Box-Muller's cut-off
TAIL_Z = 9.8  # the table covers |k + 1/2| <= 9.8 sigma / h: 2 Phi(-9.8) < 2^-70 lies beyond
MAX_CELLS = 1 << 20  # tables up to sigma / h of about 53000
_PREC = 128  # bits of the threshold arithmetic


def format_grid(grid: float) -> str:
    """``1/255`` for the grid 1/255 (a unit fraction), else the number."""
    inv = 1 / grid
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 * inv and round(inv) >= 1 else f"{grid:g}"


def parse_grid(text) -> float:
    """A grid step from a number or a fraction (``1/255``); positive and finite."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"the grid step must be a positive number or fraction such as 1/255, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the grid step must be a positive number or fraction such as 1/255, got {text!r}")
    return value


@dataclass(frozen=True)
class CellTable:
    """The sampler's table of one (sigma, grid): see the module docstring.

    first_cell: the offset k of table cell 0 (``-M``). thresholds: uint64 ``[cells]`` (the last one
    2^64 - 1). guide: int32 ``[buckets + 1]`` (``csrc/grid.h``). probabilities: float64 ``[cells]``,
    the exact law ``P(k)`` of each offset (the end cells without the tails beyond). tv: the total
    variation between the drawn and the exact law of one coordinate, rounded up.
    """
    sigma: float
    grid: float
    first_cell: int
    thresholds: np.ndarray
    guide: np.ndarray
    probabilities: np.ndarray
    tv: float
    device_tensors: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def cells(self) -> int:
        return int(self.thresholds.shape[0])

    def tensors(self, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(thresholds as int64 bit patterns, guide) on ``device``, cached per device."""
        key = str(torch.device(device))
        if key not in self.device_tensors:
            self.device_tensors[key] = (torch.from_numpy(self.thresholds.view(np.int64)).to(device),
                          torch.from_numpy(self.guide).to(device))
        return self.device_tensors[key]


@functools.lru_cache(maxsize=16)
def cell_table(sigma: float, grid: float) -> CellTable:
    """The exact sampler's table for noise level ``sigma`` on a grid of step ``grid`` (cached)."""
    import mpmath  # deferred: only sound mode's table needs arbitrary precision

    sigma, grid = float(sigma), float(grid)
    if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(grid) and grid > 0):
        raise ValueError(f"sigma and the grid step must be positive and finite, got sigma={sigma}, grid={grid}")
    ratio = sigma / grid
    half_cells = max(1, math.ceil(TAIL_Z * ratio))
    if 2 * half_cells + 1 > MAX_CELLS:
        raise ValueError(f"sigma / grid = {ratio:.4g} needs a table of {2 * half_cells + 1} cells (at most {MAX_CELLS}); "
                         f"use a coarser grid or a smaller sigma")
    with mpmath.workprec(_PREC):
        s = mpmath.mpf(sigma) / mpmath.mpf(grid)  # the exact binary values of both
        root2 = mpmath.sqrt(2)
        # upper[k] = P(K > k) = Phi(-(k + 1/2) / s) for k = 0 .. M: the law's upper tails, by symmetry
        # also its lower ones (P(K < -k) = upper[k - 1]).
        upper = [mpmath.erfc((k + mpmath.mpf(0.5)) / s / root2) / 2 for k in range(half_cells + 1)]
        ks = range(-half_cells, half_cells + 1)
        cdf = [1 - upper[k] if k >= 0 else upper[-k - 1] for k in ks]  # F(k) = P(K <= k)
        scale = mpmath.mpf(2) ** 64
        top = (1 << 64) - 1
        thresholds = [min(int(mpmath.nint(f * scale)), top) for f in cdf[:-1]] + [top]
        # sum_k |Q(k) - P(k)| over all integers k: the tails beyond the table (P(K > M) + P(K < -M),
        # where Q is 0), then each cell (the end cells' Q also holds the tails).
        tv2 = upper[half_cells] * 2
        prev_t, prev_f = 0, upper[half_cells]  # F(-M - 1) = P(K > M)
        probs = []
        for c, f in enumerate(cdf):
            t = (1 << 64) if c == len(cdf) - 1 else thresholds[c]
            exact = f - prev_f  # P(K = k_c)
            tv2 += abs(mpmath.mpf(t - prev_t) / scale - exact)
            probs.append(float(exact))
            prev_t, prev_f = t, f
        # 128-bit arithmetic: each term is off by far less than 2^-100; that margin is added, then
        # the float64 value rounded up.
        tv = math.nextafter(float(tv2 / 2 + mpmath.mpf(len(cdf)) * mpmath.mpf(2) ** -100), math.inf)
    t64 = np.array(thresholds, dtype=np.uint64)
    return CellTable(sigma, grid, -half_cells, t64, _guide(t64), np.array(probs), tv)


def _guide(thresholds: np.ndarray) -> np.ndarray:
    """grid.h's guide: the first cell of each bucket of high words, bit 31 set where the bucket holds a
    threshold's high word (the last threshold, 2^64 - 1, is an end marker and counts for none)."""
    cells = thresholds.shape[0]
    bits = min(31, max(4, math.ceil(math.log2(cells)) + 2))
    hi = (thresholds >> np.uint64(32)).astype(np.int64)
    starts = np.arange((1 << bits) + 1, dtype=np.int64) << (32 - bits)
    first = np.searchsorted(hi, starts[:-1], side="left")
    inner = hi[:-1]
    mixed = np.searchsorted(inner, starts[1:], side="left") > np.searchsorted(inner, starts[:-1], side="left")
    guide = np.empty((1 << bits) + 1, dtype=np.int64)
    guide[:-1] = np.minimum(first, cells - 1) | np.where(mixed, 1 << 31, 0)
    guide[-1] = cells - 1
    return guide.astype(np.uint32).view(np.int32)


def grid_cells(x: torch.Tensor, grid: float) -> torch.Tensor:
    """The grid indices ``m = x / grid`` of inputs on the grid (int32, x's shape and device).

    An element counts as on the grid when it is ``m * grid`` rounded to x's dtype: within
    ``eps(dtype) * max(|x|, grid)`` of it. Anything else is refused with the first offending element.
    """
    xd = x.detach().double()
    m = torch.round(xd / grid)
    tol = torch.finfo(x.dtype).eps * torch.clamp(xd.abs(), min=grid)
    ok = ((xd - m * grid).abs() <= tol) & (tol < grid / 4) & (m.abs() < 2**31 - MAX_CELLS)
    if not bool(ok.all()):
        flat = int((~ok).flatten().nonzero()[0])
        index = tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape)))
        value = float(xd.flatten()[flat])
        what = f"is {value!r}"
        if math.isfinite(value) and abs(value / grid) < 2**31:
            near = round(value / grid)
            what += f", {abs(value - near * grid):.3g} from the nearest grid point {near}*{format_grid(grid)}"
            if torch.finfo(x.dtype).eps * max(abs(value), grid) >= grid / 4:
                what += f" ({x.dtype} cannot hold this grid: pass float32 inputs)"
        raise ValueError(f"input element {list(index)} {what}: it is not on the grid of step {format_grid(grid)}; "
                         f"sound mode needs quantised inputs: round them to the grid (torch.round(x / h) * h) or "
                         f"pass the step of the grid they lie on (--grid H, grid=H)")
    return m.to(torch.int32)


def gaussian_charge(dim: int) -> float:
    """The standard path's charge for inputs of ``dim`` coordinates: ``ceil(dim / 2) * 2^-33`` (exact)."""
    return float(Fraction(-(-int(dim) // 2)) * Fraction(U_MIN))


def sound_charge(sigma: float, grid: float, dim: int) -> float:
    """The sound path's charge for inputs of ``dim`` coordinates: ``dim * tv`` rounded up."""
    return math.nextafter(int(dim) * cell_table(sigma, grid).tv, math.inf)


def noise_charge(dim: int, sigma: float, grid: Optional[float] = None) -> float:
    """The charge of one sample of ``dim`` coordinates: sound (on ``grid``) or standard (grid None)."""
    return gaussian_charge(dim) if grid is None else sound_charge(sigma, grid, dim)
