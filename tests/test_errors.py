"""User mistakes give one clear, typed error (a SmoeError subclass) whose message names the bad value and what
is accepted; the CLI prints it after "error:" and exits with status 2, without a traceback."""
from __future__ import annotations

import re

import numpy as np
import pytest

from smoe.cli import main
from smoe.errors import (
    BudgetError, CheckpointError, PolicyParamError, PromptError, SmoeError, UnknownPolicy, UnsupportedArchitecture,
)
from smoe.families import FAMILIES as SUPPORTED
from smoe.runtime import Runtime
from smoe_test_support import PROMPTS

FAMILY = "qwen2_moe"


def make_runtime(model_dir, policy="lru", **kw):
    kw.setdefault("cache_experts", 4)
    rt = Runtime(model_dir, policy, device="cpu", **kw)
    rt.close()  # only reached when no error was raised
    return rt


def test_all_error_types_are_smoe_errors():
    for cls in (BudgetError, CheckpointError, PolicyParamError, PromptError, UnknownPolicy, UnsupportedArchitecture):
        assert issubclass(cls, SmoeError)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        make_runtime(missing)
    assert str(missing) in str(err.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        make_runtime(tmp_path)


def test_config_without_weights(tmp_path, tiny):
    (tmp_path / "config.json").write_text((tiny(FAMILY) / "config.json").read_text())
    with pytest.raises(CheckpointError, match="safetensors"):
        make_runtime(tmp_path)


def test_unsupported_architecture(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture) as err:
        make_runtime(tmp_path)
    msg = str(err.value)
    assert "'llama'" in msg
    for family in SUPPORTED:
        assert family in msg


def test_budget_too_small_states_the_minimum(tiny):
    with pytest.raises(BudgetError) as err:
        make_runtime(tiny(FAMILY), budget_gb=0.0001, cache_experts=None)
    msg = str(err.value)
    m = re.search(r"minimum is (\d+\.\d+) GiB", msg)
    assert m, msg
    minimum = float(m.group(1))
    assert minimum > 0.0001
    # and the stated minimum is indeed enough (rounded up to the printed precision)
    rt = make_runtime(tiny(FAMILY), budget_gb=minimum + 0.001, cache_experts=None)
    assert rt.memory.capacity >= rt.memory.min_slots


def test_budget_must_be_positive(tiny):
    with pytest.raises(BudgetError, match="positive"):
        make_runtime(tiny(FAMILY), budget_gb=0.0, cache_experts=None)


def test_too_few_slots_for_the_batch(tiny):
    with pytest.raises(BudgetError, match=r"--cache-experts 1 is too small.*top-k 2 x batch 2"):
        make_runtime(tiny(FAMILY), cache_experts=1, batch=2)
    make_runtime(tiny(FAMILY), cache_experts=4, batch=2)  # the stated minimum works


def test_both_or_neither_budget(tiny):
    with pytest.raises(BudgetError, match="exactly one"):
        make_runtime(tiny(FAMILY), budget_gb=1.0, cache_experts=4)
    with pytest.raises(BudgetError, match="exactly one"):
        make_runtime(tiny(FAMILY), cache_experts=None)


def test_unsupported_device(tiny):
    with pytest.raises(BudgetError, match="not supported"):
        Runtime(tiny(FAMILY), "lru", device="meta", cache_experts=4)


def test_grouped_experts_names_the_accepted_ways(tiny):
    with pytest.raises(BudgetError, match="grouped_experts='batched' is not one of off, gather, slots, graphs"):
        Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, grouped_experts="batched")
    for way in ("slots", "graphs"):
        with pytest.raises(BudgetError, match=f"grouped_experts='{way}' needs Triton and a CUDA device .device cpu."):
            Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, grouped_experts=way)


def test_emulated_link_needs_a_gpu_and_a_positive_rate(tiny):
    with pytest.raises(BudgetError, match="link_gbps=12.0 emulates a slower PCIe link and needs device cuda"):
        Runtime(tiny(FAMILY), "lru", cache_experts=8, link_gbps=12.0)


def test_link_hold_time():
    from smoe.hardware import hold_seconds

    # 55 MB at a native 55 GB/s takes 1 ms; over a 12 GB/s link it must take 4.58 ms: hold 3.58 ms
    assert hold_seconds(55_000_000, 12e9, 55e9) == pytest.approx(55e6 / 12e9 - 1e-3)
    assert hold_seconds(55_000_000, 60e9, 55e9) == 0.0  # never negative


@pytest.mark.parametrize("clock", [0.5, 1.0, 1.16, 3.0])
@pytest.mark.parametrize("lag", [0, 3])
def test_link_hold_tuned_to_the_measured_copy_times(clock, lag):
    """The spin runs at `clock` x the cycles per second it was calibrated at, and each copy's time is read `lag` batches
    of copies after it was issued (the copies in flight): the measured times bring a 55 MB copy (50 GB/s real,
    24 GB/s emulated) to its 2.29 ms however far off the calibrated hold was, without the oscillation that counting
    copies issued before a change would start (at clock 0.5 and lag 3: a hold swinging past twice its target)."""
    from smoe.hardware import HoldTuner, hold_seconds

    target, cps = 55e6 / 24e9, 1.98e9
    tuner = HoldTuner(target, cps, round(hold_seconds(55_000_000, 24e9, 50e9) * cps))
    rng = np.random.default_rng(0)

    def copies(n):  # measured times: the real copy (5% noise) and the spin at the actual clock
        return list(55e6 / 50e9 * (1 + 0.05 * rng.standard_normal(n)) + tuner.hold_cycles / (clock * cps))

    before = np.mean(copies(200))
    assert (abs(before - target) > 0.05 * target) == (clock != 1.0)  # the calibration alone is off unless clock 1
    in_flight: list[list[float]] = []
    for _ in range(120):
        in_flight.append(copies(7))  # batches that are not multiples of `every`
        if len(in_flight) > lag:
            tuner.observe(in_flight.pop(0), in_flight=sum(map(len, in_flight)))
    assert np.mean(copies(200)) == pytest.approx(target, rel=0.02)
    assert tuner.rounds >= 120 // (lag + 1)  # a round, then the copies issued before it pass uncounted


def test_link_hold_waits_for_a_full_round_and_never_goes_negative():
    from smoe.hardware import HoldTuner

    tuner = HoldTuner(target_s=1e-3, cycles_per_s=1e9, hold_cycles=500_000)
    tuner.observe([0.9e-3] * 3)
    assert (tuner.hold_cycles, tuner.rounds) == (500_000, 0)  # three of the four a round needs
    tuner.observe([0.9e-3, 0.5e-3, 0.5e-3], in_flight=2)
    assert (tuner.hold_cycles, tuner.rounds) == (550_000, 1)  # 0.1 ms short: half of it added
    tuner.observe([0.5e-3] * 2 + [5e-3] * 3)  # the 2 left of that read and the 2 in flight then were issued before it
    assert (tuner.hold_cycles, tuner.rounds) == (550_000, 1)
    tuner.observe([5e-3])  # copies slower than the link on their own
    assert tuner.hold_cycles == 0


class _StreamEvent:
    """A copy-stream event as the pool reads it: recorded at `ms` on a stream that has got to `stream["ms"]`."""

    def __init__(self, stream: dict, ms: float):
        self.stream, self.ms = stream, ms

    def query(self) -> bool:
        return self.ms <= self.stream["ms"]

    def synchronize(self) -> None:
        self.stream["ms"] = max(self.stream["ms"], self.ms)

    def elapsed_time(self, end) -> float:
        return end.ms - self.ms


def test_finished_copies_feed_the_link_costs_and_counters(tiny):
    """What the engine reads of the streams' events (GPU runs; stand-in events here): finished copies only, in
    order, unless told to wait for all; each copy's time goes to the link's tuner, the load costs and the counters,
    the copy stream's wait for a victim's reader before it to `victim_wait_s`, and the compute stream's waits for
    copies to `copy_wait_s`."""
    rt = Runtime(tiny(FAMILY), "lru", cache_experts=8)
    seen = []
    rt.pool.link = type("Link", (), {"observe": lambda self, s, in_flight: seen.append((s, in_flight))})()
    copies = {"ms": 6.0}  # the copy stream is at 6 ms: the third copy (5 -> 9 ms) is under way
    compute = {"ms": 6.0}
    ev = lambda stream, *ms: tuple(_StreamEvent(stream, t) for t in ms)  # noqa: E731
    # (queued, start, end): the second copy waited 1 ms for its slot's last reader (queued at 2, started at 3)
    rt.pool._timed = [ev(copies, 0.0, 0.0, 2.0), ev(copies, 2.0, 3.0, 5.0), ev(copies, 5.0, 5.0, 9.0),
                      ev(copies, 9.0, 9.5, 10.0)]
    # (before, after) around the compute stream's waits: 0.5 ms for the first copy, 2.5 ms (unfinished) for the third
    rt.pool._waited = [ev(compute, 1.5, 2.0), ev(compute, 6.5, 9.0)]
    eng, nbytes = rt.engine, rt.pool.store.expert_bytes
    eng.phase = "decode"
    eng.read_copies()
    assert seen == [([0.002, 0.002], 2)] and list(eng.costs["load"])[-2:] == [0.002, 0.002]  # 2 still in flight
    d = eng.metrics["decode"]
    assert (d.copy_s, d.copy_bytes) == (pytest.approx(0.004), 2 * nbytes)
    assert (d.victim_wait_s, d.copy_wait_s) == (pytest.approx(0.001), pytest.approx(0.0005))
    eng.read_copies()
    assert len(seen) == 1  # nothing more has finished: the tuner is not called with nothing
    eng.read_copies(wait=True)
    assert seen[1] == ([pytest.approx(0.004), pytest.approx(0.0005)], 0) and rt.pool._timed == []
    assert rt.pool._waited == [] and d.copy_wait_s == pytest.approx(0.003)
    assert d.victim_wait_s == pytest.approx(0.0015)
    summary = eng.metrics.summary()
    assert summary["copy_gbps"] == pytest.approx(4 * nbytes / 0.0085 / 1e9)
    assert (summary["copy_wait_s"], summary["victim_wait_s"]) == (pytest.approx(0.003), pytest.approx(0.0015))
    rt.close()


@pytest.mark.parametrize("capturing", [False, True])
def test_the_compute_streams_wait_for_a_layers_copies_is_timed_once(tiny, monkeypatch, capturing):
    """`SlotPool._await` (GPU runs; stand-in stream and events here): the compute stream waits once for each copy
    not yet waited for, and the wait for all of a layer's fresh slots is timed by one pair of events (none while a
    graph is being captured)."""
    import torch

    class Event:
        def __init__(self, enable_timing=False):
            self.on = None

        def record(self, stream):
            self.on = stream

    rt = Runtime(tiny(FAMILY), "lru", cache_experts=8)
    pool = rt.pool
    waited = []
    pool.compute_stream = type("Stream", (), {"wait_event": lambda self, ev: waited.append(ev)})()
    pool.ready = [Event() for _ in range(pool.capacity)]
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    pool._fresh = {1, 2}
    pool._await([2, 5, 1, 2])  # slot 5's copy was waited for before
    assert waited == [pool.ready[2], pool.ready[1]] and pool._fresh == set()
    if capturing:
        assert pool._waited == []
    else:
        assert len(pool._waited) == 1 and all(ev.on is pool.compute_stream for ev in pool._waited[0])
    pool._await([1, 2])  # nothing fresh: no wait, no events
    assert len(waited) == 2 and len(pool._waited) == (0 if capturing else 1)
    rt.close()


def test_measured_copy_rate_in_the_summary():
    from smoe.metrics import Metrics

    m = Metrics()
    assert m.summary()["copy_gbps"] is None  # no copy timed (a CPU run)
    m["prefill"].copy_s, m["prefill"].copy_bytes = 0.5, 10_000_000_000
    m["decode"].copy_s, m["decode"].copy_bytes = 1.5, 38_000_000_000
    assert m.summary()["copy_gbps"] == pytest.approx(24.0)


def test_unknown_policy(tiny):
    with pytest.raises(UnknownPolicy, match="'no-such-policy'.*known policies: .*lru"):
        make_runtime(tiny(FAMILY), "no-such-policy")


def test_unknown_policy_parameter(tiny):
    with pytest.raises(PolicyParamError, match="takes no parameter bogus; accepted"):
        make_runtime(tiny(FAMILY), "lru", policy_params={"bogus": "1"})


def test_policy_spec():
    from smoe.policy import parse_policy_spec

    assert parse_policy_spec("smoe") == ("smoe", {})
    assert parse_policy_spec("smoe:prefetch_mode=none,alpha=0.3") == ("smoe", {"prefetch_mode": "none", "alpha": "0.3"})
    with pytest.raises(PolicyParamError, match="'alpha' is not NAME=VALUE"):
        parse_policy_spec("smoe:alpha")
    with pytest.raises(UnknownPolicy, match="'smoo'.*known policies"):
        parse_policy_spec("smoo:alpha=1")


def test_policy_parameter_of_the_wrong_type(tiny):
    with pytest.raises(PolicyParamError, match="alpha"):
        make_runtime(tiny(FAMILY), "smoe", policy_params={"alpha": "high"})


def test_prompt_longer_than_the_context(tiny):
    d = tiny(FAMILY, max_position_embeddings=64)
    rt = Runtime(d, "lru", device="cpu", cache_experts=4, batch=1)
    try:
        with pytest.raises(PromptError, match="exceeds the model's context of 64 tokens"):
            rt.generate(["x" * 100], 4)
        with pytest.raises(PromptError, match="context"):  # fits alone, not with the new tokens
            rt.generate(["x" * 60], 8)
        assert len(rt.generate(["x" * 40], 8).tokens[0]) == 8  # fits
    finally:
        rt.close()


def test_bad_prompts(tiny):
    rt = Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, batch=1)
    try:
        with pytest.raises(PromptError, match="no prompts"):
            rt.generate([], 4)
        with pytest.raises(PromptError, match="exceed the batch size 1"):
            rt.generate(PROMPTS, 4)
        with pytest.raises(PromptError, match="at least 1"):
            rt.generate(["hi"], 0)
        with pytest.raises(PromptError, match="empty"):
            rt.generate([[]], 4)
    finally:
        rt.close()


# ---- the same through the CLI ----------------------------------------------------------------------------
def cli_error(capsys, argv) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2
    assert out.err.startswith("error: "), out.err
    assert "Traceback" not in out.err and "Traceback" not in out.out
    assert len(out.err.strip().splitlines()) == 1  # one message, nothing else
    return out.err


def test_cli_missing_model(capsys, tmp_path):
    missing = tmp_path / "missing"
    err = cli_error(capsys, ["run", "--model", str(missing), "--policy", "lru", "--cache-experts", "4",
                             "--prompt", "hi"])
    assert str(missing) in err


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--policy", "nope", "--cache-experts", "4"], "unknown policy"),
        (["--policy", "lru", "--cache-experts", "4", "--set", "bogus=1"], "takes no parameter bogus"),
        (["--policy", "lru", "--cache-experts", "4", "--set", "bogus"], "NAME=VALUE"),
        (["--policy", "lru", "--budget-gb", "0.0001"], "minimum is"),
        (["--policy", "all-gpu", "--cache-experts", "4"], "all-gpu needs all"),
        (["--policy", "lru", "--cache-experts", "4", "--kv-cache", "paged"], "kv_cache='paged'; accepted: dynamic, static"),
    ],
)
def test_cli_user_errors(capsys, tiny, extra, expected):
    err = cli_error(capsys, ["run", "--model", str(tiny(FAMILY)), "--prompt", "hi", *extra])
    assert expected in err


def test_cli_prompt_too_long(capsys, tiny):
    d = tiny(FAMILY, max_position_embeddings=64)
    err = cli_error(capsys, ["run", "--model", str(d), "--policy", "lru", "--cache-experts", "4",
                             "--prompt", "x" * 100, "--max-new-tokens", "4"])
    assert "context" in err


def test_cli_missing_prompt_file(capsys, tiny, tmp_path):
    err = cli_error(capsys, ["run", "--model", str(tiny(FAMILY)), "--policy", "lru", "--cache-experts", "4",
                             "--prompt-file", str(tmp_path / "none.txt")])
    assert "none.txt" in err


def test_token_ids_outside_the_vocabulary(tiny):
    rt = Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, batch=1)
    try:
        with pytest.raises(PromptError, match="vocab"):
            rt.generate([[300, 1]], 2)
    finally:
        rt.close()


def test_close_twice_and_generate_after_close(tiny):
    from smoe.errors import SmoeError

    rt = Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, batch=1)
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(SmoeError, match="closed"):
        rt.generate(["hi"], 2)


def test_trace_is_per_generate_call(tiny):
    rt = Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=4, batch=1, trace=True)
    try:
        rt.generate(["hi"], 3)
        first = len(rt.engine.trace)
        rt.generate(["hi"], 3)
        assert len(rt.engine.trace) == first and rt.engine.trace[0]["step"] == 0
    finally:
        rt.close()
