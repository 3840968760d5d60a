"""The caching policies' victim search (`CachingPolicy.victims`): the order is ascending `eviction_rank` keys, ties
to the lower (layer row, expert), however many victims the caller expects to take."""
from __future__ import annotations

import numpy as np

from smoe.caching import CachingPolicy


class Ranked(CachingPolicy):
    """A caching policy whose eviction keys are given."""

    def __init__(self, keys, in_cache):
        super().__post_init__()
        self.keys, self.in_cache = keys, in_cache
        self.layers = [10 + i for i in range(in_cache.shape[0])]  # decoder layer of each row

    def eviction_rank(self, view):
        return self.keys


def sorted_order(policy: Ranked, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Every candidate by one stable sort over all keys (first key most significant)."""
    L, E = allowed.shape
    cands = [(row, e) for row in range(L) for e in range(E) if policy.in_cache[row, e] and allowed[row, e]]
    cands.sort(key=lambda c: tuple(np.broadcast_to(k, (L, E))[c] for k in policy.keys))
    return [(policy.layers[row], e) for row, e in cands]


def test_victims_follow_the_eviction_keys_with_ties_to_the_lower_index():
    rng = np.random.default_rng(0)
    L, E = 6, 16
    for trial in range(200):
        ties = trial % 2 == 0  # few distinct values: ties decided by the later keys, then by position
        first = rng.integers(0, 3, (L, E)).astype(float) if ties else rng.random((L, E))
        second = rng.integers(0, 4, (L, E)) if ties else rng.integers(0, 10**6, (L, E))
        keys = (first, second) if trial % 3 else (first, second, rng.integers(0, 2, (1, E)))  # a broadcast key too
        policy = Ranked(keys, rng.random((L, E)) < 0.5)
        allowed = rng.random((L, E)) < 0.8
        want = sorted_order(policy, allowed)
        for wanted in (1, 2, 3, 50):  # picked by minimum (1, 2) or sorted
            got = list(policy.victims(None, allowed, wanted))
            assert got == want, (trial, wanted)
            assert all(type(layer) is int and type(e) is int for layer, e in got)


def test_victims_with_boolean_and_extreme_keys():
    """Keys as SMoE gives them (a boolean first key, all false or not) and integer keys at their dtype's extremes
    rank the same as one stable sort over all keys."""
    rng = np.random.default_rng(1)
    L, E = 5, 12
    big = np.iinfo(np.int64).max
    for trial in range(300):
        flag = rng.random((L, E)) < (0.0 if trial % 3 == 0 else 0.2)
        means = rng.integers(0, 3, (L, E)).astype(float)
        recency = rng.choice([0, 1, big, -big - 1], (L, E))
        policy = Ranked((flag, means, recency), rng.random((L, E)) < 0.6)
        allowed = rng.random((L, E)) < 0.9
        want = sorted_order(policy, allowed)
        for wanted in (1, 2, 3, 100):
            assert list(policy.victims(None, allowed, wanted)) == want, (trial, wanted)
