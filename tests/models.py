"""Classifiers whose smoothed probabilities are known exactly, for statistical tests."""
import numpy as np
import torch
from scipy.stats import norm


class Linear2(torch.nn.Module):
    """Two-class linear classifier sign(w.x + b), evaluated in float64.

    Its smoothed classifier at noise sigma has p_A = Phi(|w.x + b| / (||w|| sigma)), so the exact
    certified radius sigma * Phi^-1(p_A) is the distance |w.x + b| / ||w|| to the hyperplane.
    """

    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float64))
        self.b = float(b)

    def forward(self, x):
        s = x.flatten(1).double() @ self.w.to(x.device) + self.b
        return torch.stack([-s, s], dim=1)

    def distance(self, x) -> float:
        return abs(float(x.double() @ self.w + self.b)) / float(self.w.norm())


class Bins(torch.nn.Module):
    """Class c when the first coordinate lies in [edges[c], edges[c+1]); other coordinates ignored.

    Under N(0, sigma^2) noise, p_c = Phi((edges[c+1] - t) / sigma) - Phi((edges[c] - t) / sigma).
    """

    def __init__(self, edges):
        super().__init__()
        self.edges = [-np.inf] + list(edges) + [np.inf]

    @property
    def num_classes(self):
        return len(self.edges) - 1

    def forward(self, x):
        t = x[:, 0].double()
        cls = torch.bucketize(t, torch.tensor(self.edges[1:-1], dtype=torch.float64, device=x.device), right=True)
        return torch.nn.functional.one_hot(cls, self.num_classes).double()

    def probs(self, t: float, sigma: float) -> np.ndarray:
        cdf = norm.cdf((np.array(self.edges) - t) / sigma)
        return np.diff(cdf)
