"""Routing statistics from decode traces (paper Fig. 4/6 [v3 Fig. 5/7]), on hand-made traces."""
import pytest
import torch

from smoe.trace_stats import passes, plan_summary, reuse_by_rank, score_by_rank


def rec(step, scores, topk, layer=0, phase="decode"):
    return {"step": step, "layer": layer, "phase": phase, "scores": torch.tensor([scores]),
            "topk": torch.tensor([topk])}


def test_reuse_by_rank_counts_top_k_use_in_the_next_steps_by_score_rank():
    trace = [
        rec(0, [0.3, 0.2, 0.4, 0.1], [2]),  # ranks: e2, e0, e1, e3; later used: e0, e0, e3 -> {0, 3}
        rec(1, [0.4, 0.3, 0.2, 0.1], [0]),  # ranks: e0, e1, e2, e3; later used: e0, e3, e1 -> {0, 1, 3}
        rec(2, [0.1, 0.2, 0.3, 0.4], [0]),
        rec(3, [0.1, 0.2, 0.3, 0.4], [3]),
        rec(4, [0.1, 0.4, 0.3, 0.2], [1]),
        rec(0, [0.9, 0.0, 0.0, 0.1], [0], phase="prefill"),  # prefill is left out
    ]
    assert reuse_by_rank(trace, horizon=3).tolist() == [0.5, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no decode step with 5 successors"):
        reuse_by_rank(trace, horizon=5)
    # a second generate call of the same run counts its steps from 0 again: its steps are not the first call's
    # successors, and it adds no step with 3 successors of its own
    again = [rec(0, [0.9, 0.0, 0.0, 0.1], [0], phase="prefill")] + [rec(s, [0.1, 0.2, 0.3, 0.4], [2]) for s in (1, 2, 3)]
    assert reuse_by_rank(trace + again, horizon=3).tolist() == [0.5, 1.0, 0.0, 1.0]
    assert reuse_by_rank(trace + again, horizon=2).tolist() == [0.5, 0.5, 0.25, 0.25]


def test_passes_start_a_new_call_where_step_and_layer_stop_rising():
    layers = [{"step": s, "layer": l} for s in (0, 1, 2) for l in (1, 3)]
    only_prefill = [{"step": 0, "layer": l} for l in (1, 3)]
    assert passes(layers + only_prefill + layers) == [0] * 6 + [1] * 2 + [2] * 6


def test_score_by_rank_averages_sorted_scores_over_tokens_and_layers():
    trace = [rec(1, [0.1, 0.6, 0.3], [1]), rec(1, [0.5, 0.2, 0.3], [0], layer=1),
             rec(0, [1.0, 0.0, 0.0], [0], phase="prefill")]
    assert score_by_rank(trace).tolist() == pytest.approx([0.55, 0.3, 0.15])


def test_plan_summary_counts_what_each_forward_executed():
    r = rec(3, [0.4, 0.3, 0.2, 0.1], [0, 1], layer=2)
    r["topk"] = torch.tensor([[0, 1], [2, 1]])  # two tokens, top-2
    r["actions"] = torch.tensor([[0, 3], [2, 1]], dtype=torch.int8)  # e0 hit, e1 substituted by e3; e2 cpu, e1 load
    r["standins"] = torch.tensor([[-1, 3], [-1, -1]])
    r.update(loads=[(2, 1)], cpu=[2], prefetch=[(3, 0), (3, 2)])
    prefill = dict(r, phase="prefill")
    # device: e0 (hit), e1 (loaded for token 1), e3 (the stand-in); CPU: e2
    assert plan_summary([prefill, r]) == [[3, 2, 2, 3, 1, 1, 2]]
