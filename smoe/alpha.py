"""Choosing SMoE's substitution threshold alpha (paper Section V-C, Eq. 5): min_alpha A(alpha) s.t. T(alpha) <= R.

Where it sits: `python -m smoe tune-alpha` measures TPOT T(alpha) on a grid (the paper's 0, 0.05, ..., 0.6)
for one model, budget and workload, fits a low-degree polynomial to the points, and picks the smallest alpha
whose predicted TPOT meets the budget R (accuracy loss grows with alpha, so the smallest feasible alpha is
the most accurate one).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

PAPER_GRID = [round(0.05 * i, 2) for i in range(13)]  # 0.00 .. 0.60


def fit_tpot(alphas: list[float], tpots: list[float], degree: int = 2) -> np.ndarray:
    """Polynomial coefficients (highest power first) of T(alpha)."""
    if len(alphas) != len(tpots) or len(alphas) <= degree:
        raise ValueError(f"need more than {degree} (alpha, TPOT) points for a degree-{degree} fit, got {len(alphas)}")
    return np.polyfit(np.asarray(alphas, float), np.asarray(tpots, float), degree)


def choose_alpha(coeffs: np.ndarray, budget_s: float, lo: float = 0.0, hi: float = 0.6, step: float = 0.005) -> float | None:
    """The smallest alpha in [lo, hi] whose fitted TPOT is <= budget_s (a 1-D search), or None."""
    for a in np.arange(lo, hi + step / 2, step):
        if np.polyval(coeffs, a) <= budget_s:
            return round(float(a), 4)
    return None


def tune(measure: Callable[[float], float], budget_s: float, grid: list[float] = PAPER_GRID, degree: int = 2) -> dict:
    """measure(alpha) -> TPOT seconds. Returns the points, the fit and the choice."""
    tpots = [measure(a) for a in grid]
    coeffs = fit_tpot(grid, tpots, degree)
    choice = choose_alpha(coeffs, budget_s, min(grid), max(grid))
    return {
        "alphas": list(grid),
        "tpot_s": tpots,
        "fit_degree": degree,
        "fit_coeffs": coeffs.tolist(),
        "fit_tpot_s": [float(np.polyval(coeffs, a)) for a in grid],
        "budget_tpot_s": budget_s,
        "alpha": choice,
        "met": choice is not None,
    }
