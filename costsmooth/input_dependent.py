"""Input-dependent smoothing with a sound certificate (Súkeník, Kuvshinov, Günnemann, ICML 2022): the sigma
function and the command line. The smoothed classifier draws the noise of input x with its own level
sigma(x); its certificate needs sigma to be **r-semi-elastic** (``|log sigma(x) - log sigma(x')| <= r *
||x - x'||_2``) and comes from a noncentral chi-square bound, never from Cohen's formula at a per-input
sigma. That maths (``worst_case_probability``, ``certified_radius``, ``two_class_radius``,
``certificates_from_counts``, ``admissible_ratio``/``admissible_table``) is
``costsmooth.input_dependent_certify``; its names are re-exported here.

Contents:
- ``KNNSigma``: the paper's sigma function ``sigma_base * exp(r * (D_k(x) - m))`` (D_k: mean L2
  distance to the k nearest points of a bank of training inputs), r-semi-elastic by construction.
  ``Smooth(model, C, sigma=KNNSigma(...))`` certifies with the sound bound.
- ``costsmooth admissible-ratio`` prints the admissible sigma1/sigma0 band; ``costsmooth certify
  --sigma-fn knn`` certifies with a ``KNNSigma`` built on the dataset's train split
  (``add_sigma_fn_args``, ``sigma_from_args``).
"""
from __future__ import annotations

import hashlib
import math
import numbers
from typing import Optional, Tuple

import numpy as np
import torch

from ._checks import check_count, check_float_tensor, check_positive_finite
from .args import HelpFormatter, UsageError, float_list, positive_float
from .data import DatasetError, load_dataset
from .input_dependent_certify import (FLOAT32_RATIO_SLACK, LAMBDA_MAX, XI_MARGIN, admissible_ratio, admissible_table,
                                      certificates_from_counts, certified_radius, check_semi_elasticity,
                                      check_sigma_fn, sigma_noise_level, two_class_radius, worst_case_probability)

__all__ = ["KNNSigma", "check_sigma_fn", "worst_case_probability", "certified_radius", "two_class_radius",
           "admissible_ratio", "admissible_table", "certificates_from_counts", "sigma_noise_level",
           "add_sigma_fn_args", "sigma_from_args", "register_cli", "FLOAT32_RATIO_SLACK", "LAMBDA_MAX", "XI_MARGIN",
           "check_semi_elasticity", "format_admissible_table"]


# ----------------------------------------------------------------------------------------------
# Sigma functions
# ----------------------------------------------------------------------------------------------
class KNNSigma:
    """The paper's sigma function: ``sigma(x) = sigma_base * exp(r * (D_k(x) - m))``, optionally clipped.

    Args:
        bank: training inputs ``[M, *shape]`` (float); distances are computed on the bank's device.
        sigma_base: sigma at D_k = m. r: the semi-elasticity (default 0.01, the paper's).
        k: neighbours (default 20; must be <= M). m: the centring distance; default the median D_k of
            up to 2000 evenly spaced bank points (each point's own zero distance excluded).
        clip: optional ``(lo, hi)`` range for sigma (clipping keeps semi-elasticity r).
        chunk: bank rows per distance block (memory ``chunk x batch`` float64).

    D_k(x) is the mean Euclidean distance from ``x.flatten()`` to its k nearest bank points, exact, in
    float64 (1-Lipschitz, so log sigma is r-Lipschitz). ``sigma_fn(x)`` returns float64 ``[B]`` on
    x's device; ``semi_elasticity`` is r; ``describe()`` gives a JSON-able summary for result files.
    """

    def __init__(self, bank: torch.Tensor, *, sigma_base: float, r: float = 0.01, k: int = 20,
                 m: Optional[float] = None, clip: Optional[Tuple[float, float]] = None, chunk: int = 4096):
        check_float_tensor(bank, "bank")
        if bank.dim() < 2 or bank.shape[0] < 1:
            raise ValueError(f"bank must be a batch of training inputs [M, *shape], got shape {list(bank.shape)}")
        self.bank = bank.detach().reshape(bank.shape[0], -1)
        self.sigma_base = check_positive_finite(sigma_base, "sigma_base")
        self.semi_elasticity = check_semi_elasticity(r, "r")
        self.k = check_count(k, "k")
        if self.k > self.bank.shape[0]:
            raise ValueError(f"k={k} neighbours but the bank holds only {self.bank.shape[0]} inputs; lower k")
        self.chunk = check_count(chunk, "chunk")
        if clip is not None:
            lo, hi = (float(v) for v in clip)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"clip must be (lo, hi) with 0 < lo <= hi, got {clip!r}")
            clip = (lo, hi)
        self.clip = clip
        if m is None:
            m = self._median_distance()
        elif isinstance(m, bool) or not isinstance(m, numbers.Real) or not math.isfinite(m):
            raise ValueError(f"m must be a finite distance, got {m!r}")
        self.m = float(m)

    @property
    def r(self) -> float:
        return self.semi_elasticity

    def _median_distance(self) -> float:
        size = self.bank.shape[0]
        if size <= self.k:
            raise ValueError(f"the default m needs more than k={self.k} bank inputs (got {size}); pass m")
        idx = torch.from_numpy(np.unique(np.linspace(0, size - 1, min(size, 2000)).round().astype(np.int64)))
        dk = self.distances(self.bank[idx.to(self.bank.device)], exclude=idx)
        return float(dk.median())

    def distances(self, x: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
        """D_k(x): float64 ``[B]`` on the bank's device (``exclude``: bank indices left out per row)."""
        check_float_tensor(x, "x")
        q = x.detach().reshape(x.shape[0], -1).to(device=self.bank.device, dtype=torch.float64)
        if q.shape[1] != self.bank.shape[1]:
            raise ValueError(f"inputs have {q.shape[1]} elements but the bank's have {self.bank.shape[1]}; "
                             f"build the bank from inputs of the same shape")
        best = torch.full((q.shape[0], 0), math.inf, dtype=torch.float64, device=q.device)
        for start in range(0, self.bank.shape[0], self.chunk):
            block = self.bank[start:start + self.chunk].to(torch.float64)
            dist = torch.cdist(q, block)
            if exclude is not None:
                cols = exclude.to(q.device)[:, None] - start
                inside = (cols >= 0) & (cols < block.shape[0])
                rows = torch.nonzero(inside[:, 0]).flatten()
                dist[rows, cols[rows, 0]] = math.inf
            best = torch.cat([best, dist], dim=1).topk(min(self.k, best.shape[1] + dist.shape[1]), dim=1,
                                                     largest=False).values
        return best.mean(dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_base * torch.exp(self.semi_elasticity * (self.distances(x) - self.m))
        if self.clip is not None:
            sigma = sigma.clamp(self.clip[0], self.clip[1])
        return sigma.to(x.device)

    def describe(self) -> dict:
        """JSON-able settings (with a hash of the bank) identifying this sigma function in result files."""
        digest = hashlib.sha256(self.bank.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return {"fn": "knn", "sigma_base": self.sigma_base, "r": self.semi_elasticity, "k": self.k, "m": self.m,
                "clip": list(self.clip) if self.clip is not None else None, "bank_size": int(self.bank.shape[0]),
                "bank_sha256": digest}

    def __repr__(self) -> str:
        return (f"KNNSigma(sigma_base={self.sigma_base}, r={self.semi_elasticity}, k={self.k}, m={self.m:.6g}, "
                f"clip={self.clip}, bank={self.bank.shape[0]})")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def add_sigma_fn_args(p) -> None:
    """--sigma-fn / --sigma-r / --sigma-k / --sigma-m for ``costsmooth certify``."""
    g = p.add_argument_group("input-dependent sigma (Súkeník et al. 2022; the positional sigma is sigma_base)")
    g.add_argument("--sigma-fn", choices=["knn"],
                   help="knn: sigma(x) = sigma * exp(R * (D_k(x) - M)), D_k the mean distance to the K nearest "
                        "inputs of the dataset's train split (a .pt dataset is its own bank); certificates use "
                        "the sound bound of Sukenik et al., never Cohen's formula at a per-input sigma")
    g.add_argument("--sigma-r", type=float, help="semi-elasticity R of the sigma function (default 0.01)")
    g.add_argument("--sigma-k", type=int, help="neighbours K (default 20)")
    g.add_argument("--sigma-m", type=float, help="centring distance M (default: median D_k of the train split)")


def sigma_from_args(args, device=None):
    """``args.sigma`` (a number), or a ``KNNSigma`` on the train split of ``args.dataset`` with --sigma-fn knn."""
    extra = [flag for flag, value in (("--sigma-r", args.sigma_r), ("--sigma-k", args.sigma_k),
                                      ("--sigma-m", args.sigma_m)) if value is not None]
    if args.sigma_fn is None:
        if extra:
            raise UsageError(f"{extra[0]} needs --sigma-fn knn (it configures the input-dependent sigma)")
        return args.sigma
    r = 0.01 if args.sigma_r is None else args.sigma_r
    k = 20 if args.sigma_k is None else args.sigma_k
    if not (math.isfinite(r) and r >= 0):
        raise UsageError(f"--sigma-r {r}: the semi-elasticity must be a finite number >= 0")
    if k < 1:
        raise UsageError(f"--sigma-k {k}: must be an integer >= 1")
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise UsageError(f"sigma {args.sigma}: sigma_base must be a positive finite number")
    try:
        bank = load_dataset(args.dataset, split="train")
    except DatasetError:  # no train split: a dataset certified with --split all is its own bank
        if getattr(args, "split", None) != "all":
            raise
        bank = load_dataset(args.dataset, split="all")
    bank = bank.take(range(len(bank)))[0]  # the KNN bank is held in memory
    if device is not None:
        bank = bank.to(device)
    try:
        return KNNSigma(bank, sigma_base=args.sigma, r=r, k=k, m=args.sigma_m)
    except ValueError as err:
        raise UsageError(f"--sigma-fn knn: {err}") from None


def register_cli(sub) -> None:
    p = sub.add_parser("admissible-ratio", formatter_class=HelpFormatter,
                       help="the band of sigma1/sigma0 that keeps a class at distance d (input-dependent sigma)",
                       description="Prints the admissible sigma1/sigma0 band of input-dependent smoothing for "
                                   "each (dim, p_lower, d) and the largest semi-elasticity r it allows.")
    p.add_argument("--dim", default="784,3072,150528", help="comma-separated input dimensions")
    p.add_argument("--sigma0", type=positive_float, default=0.5, help="noise level at x0")
    p.add_argument("--p", default="0.9,0.99,0.999", help="comma-separated lower bounds on p_A (in (1/2, 1))")
    p.add_argument("--d", default="0.1,0.25,0.5", help="comma-separated distances")

    def run(args):
        try:
            dims = [int(v) for v in args.dim.split(",") if v.strip()]
        except ValueError:
            dims = []
        ps = float_list(args.p, "--p")
        ds = float_list(args.d, "--d")
        if not dims or any(v < 1 for v in dims):
            raise UsageError(f"--dim {args.dim}: give comma-separated integers >= 1, e.g. 784,3072")
        if any(not 0.5 < v < 1 for v in ps):
            raise UsageError(f"--p {args.p}: each p_lower must lie in (1/2, 1)")
        if any(v < 0 for v in ds):
            raise UsageError(f"--d {args.d}: distances must be >= 0")
        print(format_admissible_table(admissible_table(dims, args.sigma0, ps, ds)))

    p.set_defaults(func=run)


def format_admissible_table(rows) -> str:
    """Markdown table of ``admissible_table`` rows."""
    lines = ["| dim | sigma0 | p_lower | d | sigma1/sigma0 band | largest r |", "|---|---|---|---|---|---|"]
    for row in rows:
        band = "empty" if math.isnan(row["lo"]) else f"[{row['lo']:.6f}, {row['hi']:.6f}]"
        max_r = "-" if math.isnan(row["max_r"]) else f"{row['max_r']:.3g}"
        lines.append(f"| {row['dim']} | {row['sigma0']:g} | {row['p_lower']:g} | {row['d']:g} | {band} | {max_r} |")
    return "\n".join(lines)
