"""The lru baseline is exactly a least-recently-used cache: replaying the trace's accesses through
`cachetools.LRUCache` gives the same hits, misses and evictions, record by record."""
from __future__ import annotations

import pytest
from cachetools import LRUCache

from smoe.runtime import Runtime
from smoe_test_support import NEW_TOKENS, PROMPTS


class RecordingLRU(LRUCache):
    """An LRUCache that remembers the keys it evicts."""

    def __init__(self, maxsize):
        super().__init__(maxsize=maxsize)
        self.popped: list = []

    def popitem(self):
        key, value = super().popitem()
        self.popped.append(key)
        return key, value


# (family, slots): small enough to evict every step, large enough for some hits; below 8 experts the prefill of
# one layer needs more experts than there are slots, so slots are reused within a layer (discard)
CASES = [("qwen2_moe", 10), ("deepseek_v3", 6), ("mixtral", 8), ("olmoe", 12)]


@pytest.mark.parametrize("family,capacity", CASES)
def test_lru_replays_as_cachetools(family, capacity, tiny):
    rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=capacity, batch=len(PROMPTS), trace=True)
    try:
        res = rt.generate(PROMPTS, NEW_TOKENS)
        trace = list(rt.engine.trace)
        info = rt.info
    finally:
        rt.close()
    assert rt.memory.capacity == capacity
    # one record per forward pass and MoE layer, in order
    assert len(trace) == NEW_TOKENS * len(info.moe_layers)
    assert [(r["step"], r["layer"]) for r in trace] == [(s, l) for s in range(NEW_TOKENS) for l in info.moe_layers]

    cache = RecordingLRU(capacity)
    total_hits = total_misses = 0
    decode_hits = decode_uses = 0
    reused_in_layer = 0
    for i, rec in enumerate(trace):
        layer = rec["layer"]
        needed = sorted(set(rec["topk"].flatten().tolist()))
        cache.popped.clear()
        hits = []
        for e in needed:  # touch the resident ones first, ascending
            if (layer, e) in cache:
                cache[(layer, e)]
                hits.append(e)
        misses = []
        for e in needed:  # then insert the missing ones, ascending
            if (layer, e) not in cache and e not in hits:
                cache[(layer, e)] = True
                misses.append(e)
        where = f"record {i} (step {rec['step']}, layer {layer})"
        assert list(rec["loads"]) == misses, where
        assert sorted(set(needed) - set(rec["loads"])) == hits, where
        # victims of other layers (or of this layer but unused here) are evicted before the loads; a victim
        # that this layer computes is reused after it has been computed (discard), never evicted up front
        expected_evict = [k for k in cache.popped if not (k[0] == layer and k[1] in needed)]
        assert list(map(tuple, rec["evict"])) == expected_evict, where
        assert rec["cpu"] == []
        reused_in_layer += len(cache.popped) - len(expected_evict)
        total_hits += len(hits)
        total_misses += len(misses)
        if rec["phase"] == "decode":
            topk = rec["topk"].flatten().tolist()
            decode_uses += len(topk)
            decode_hits += sum(1 for e in topk if e in hits)
    assert total_hits > 0 and total_misses > 0
    assert sum(len(r["evict"]) for r in trace) > 0, "the cache never had to evict: make it smaller"
    if capacity < info.num_experts:
        assert reused_in_layer > 0, "the prefill should have reused slots within one layer"
    # the runtime's counters agree with the replay
    m = res.metrics
    assert m["loads"] == total_misses
    assert m["decode"]["uses"] == decode_uses
    assert m["decode"]["hits"] == decode_hits
    assert m["hit_rate"] == pytest.approx(decode_hits / decode_uses)
