"""Alpha selection (Eq. 5): fit T(alpha), pick the smallest alpha whose predicted TPOT meets the budget."""
import json

import numpy as np
import pytest

from smoe.alpha import PAPER_GRID, choose_alpha, fit_tpot, tune
from smoe.cli import main


def test_paper_grid():
    assert PAPER_GRID[0] == 0.0 and PAPER_GRID[-1] == 0.6 and len(PAPER_GRID) == 13


def test_linear_tpot_picks_the_crossing():
    # T(alpha) = 0.1 - 0.1 * alpha: the budget 0.07 is met from alpha = 0.3 on
    coeffs = fit_tpot(PAPER_GRID, [0.1 - 0.1 * a for a in PAPER_GRID], degree=1)
    assert np.allclose(coeffs, [-0.1, 0.1], atol=1e-9)
    assert choose_alpha(coeffs, 0.07) == pytest.approx(0.3, abs=0.005)
    assert choose_alpha(coeffs, 0.2) == 0.0  # met already without substitution
    assert choose_alpha(coeffs, 0.01) is None  # never met


def test_tune_reports_points_fit_and_choice():
    result = tune(lambda a: 0.05 + 0.02 * (0.6 - a) ** 2, budget_s=0.055)
    assert result["met"] and result["alpha"] == pytest.approx(0.1, abs=0.01)  # (0.6 - a)^2 <= 0.25
    assert len(result["tpot_s"]) == 13 and result["fit_degree"] == 2


def test_too_few_points_for_the_degree():
    with pytest.raises(ValueError):
        fit_tpot([0.0, 0.1], [1.0, 0.9], degree=2)


def test_tune_alpha_command(tmp_path):
    from smoe.tiny import make_tiny

    model = make_tiny("qwen2_moe", tmp_path / "m")
    out = tmp_path / "alpha.json"
    rc = main(["tune-alpha", "--model", str(model), "--cache-experts", "6", "--batch", "2", "--prompt", "Hi there",
               "--max-new-tokens", "4", "--budget-tpot", "10", "--alphas", "0,0.3,0.6", "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["alphas"] == [0.0, 0.3, 0.6] and len(got["tpot_s"]) == 3 and got["alpha"] == 0.0
