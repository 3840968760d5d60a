"""The engine: executes one MoE layer's routed experts under a policy's plan.

Where it sits: `OffloadedExperts` replaces the `experts` module of every HF MoE block, so the family's own
router, shared experts and dense layers run unchanged; for the routed experts the block calls
`Engine.run_layer`, which per layer:
  1. turns the router logits (captured by a hook on the block's gate) into scores [T,E] and asks the
     policy for a plan (scores, top-k and the router's weights copied to the host: a wait on the compute stream
     only, up to the router; a Qwen2-MoE block starts the copy before queueing its shared expert: `router_first.py`);
  2. checks the plan, evicts, makes the layer's gate weights on the host (the router's own where a token's set is
     unchanged, the family rule elsewhere; sent to the device as the experts need them), and sends CPU experts to
     the CPU worker thread;
  3. computes resident experts on the compute stream while the loads copy on the copy stream; the loaded
     experts are computed once their copies land (event waits, no device synchronize): at decode in one batched
     product with the experts prefetched for the layer (a few launches, not ten per expert; on a GPU one CUDA graph
     replay, `grouped_graphs`, even for a lone expert), else each as its copy lands, and so in a layer whose loads
     wait for the slots its computed experts give up;
  4. lets the policy prefetch later layers (the prediction reads the experts resident before this layer's
     prefetched ones, which are computed after it: queued before the host waits for the prediction, so the device
     runs them while the host decides), collects the CPU results, and combines every expert's output
     with the family's gate weights, in ascending expert order as the HF module does (so a plan that
     changes nothing reproduces the HF output bit for bit on the same device);
  5. counts every metric and, if asked, appends the layer's scores and executed plan to the trace.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from torch import nn

from .checkpoint import ExpertShape
from .families import Family
from .metrics import Metrics, span
from .plan import _CPU, _HIT, CacheView, ExecPlan, LayerView, ModelInfo, check_plan
from .policy import ExpertPolicy
from .pool import SlotPool
from .predict import NextLayerPredictor, PrefetchContext, early_key, prediction_key
from .grouped_graphs import GroupedGraphs
from .grouped_kernel import slot_grouped_forward
from .store import expert_forward, grouped_forward, weighted_expert_sum
from .errors import PolicyError


class OffloadedExperts(nn.Module):
    """Stands in for an HF `experts` module: (hidden [T,H], top_k_index [T,K], top_k_weights [T,K]) -> [T,H]."""

    def __init__(self, layer: int):
        super().__init__()
        self.engine: Engine | None = None  # attached once the slot pool exists
        self.layer = layer
        self.logits: torch.Tensor | None = None  # [T,E], set by the gate's forward hook
        self.staged: tuple | None = None  # the scores', top-k's and weights' copy to the host under way (`stage`)

    def stage(self, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> None:
        """Start copying this layer's router scores, top-k and weights [T,K] to the host now, before the block queues
        more work (`router_first`); `forward` then waits for the copy only."""
        logits, self.logits = self.logits, None
        assert logits is not None, "router logits were not captured"
        self.staged = self.engine.stage_scores(logits, top_k_index, top_k_weights)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        if self.staged is None:  # the block did not stage the scores: start their copy now
            self.stage(top_k_index, top_k_weights)
        staged, self.staged = self.staged, None
        return self.engine.run_layer(self.layer, hidden_states, staged)


class Engine:
    def __init__(
        self,
        policy: ExpertPolicy,
        pool: SlotPool,
        family: Family,
        config,
        info: ModelInfo,
        act,
        cpu_threads: int,
        trace: bool = False,
        trace_predictions: bool = False,
        predictor: NextLayerPredictor | None = None,
        grouped: str = "off",
    ):
        self.policy = policy
        self.pool = pool
        self.family = family
        self.config = config
        self.weight_rule = family.rule(config)  # the family's gate weights for a changed expert set
        self._rows: dict[int, np.ndarray] = {}  # T -> [T,1] row indices (the gate weights' scatter)
        self.info = info
        self.shape: ExpertShape = pool.store.shape
        self.act = act
        self.device = pool.device
        self.cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-experts")
        self.cpu_threads = cpu_threads
        self.cpu.submit(torch.set_num_threads, cpu_threads).result()
        self.metrics = Metrics()
        self.phase = "prefill"
        self.step = 0
        self.trace: list[dict] | None = [] if trace else None
        self.trace_predictions = trace_predictions  # costs a predictor pass per layer: off for timed runs
        self.view = CacheView(pool)
        self.costs = {"load": deque(maxlen=256), "cpu": deque(maxlen=256)}  # measured seconds per expert
        self.predictor = predictor
        # (layer) -> the layer's scores [T,E] float32 and top-k [T,K] int64 arrays and router weights [T,K], known on
        # the host before the device routes (routing replay's `known`, a measurement): nothing is read back
        self.known_routing: Callable[[int], tuple] | None = None
        self.awaiting: set = set()  # prefetched experts whose layer has not run since
        self.wants_prefetch = type(policy).prefetch is not ExpertPolicy.prefetch
        self.early_predicts = policy.early_prediction and predictor is not None  # `NextLayerPredictor.early`
        self.early_attention = policy.early_attention  # ... with the next layer's attention
        self.early_key = early_key(self.early_attention)  # what a trace records that prediction under
        # decode: a layer's resident experts as one batched product (a few kernels, not a few per expert; the
        # runtime's default on a GPU, where launches dominate a decode step), their weights read in place from the
        # slots ("slots", `grouped_kernel`), the same captured as one CUDA graph per (experts, tokens) ("graphs",
        # `grouped_graphs`), or gathered out of the slots first ("gather"); "off": expert by expert, as HF orders.
        self.grouped = grouped
        self.products = GroupedGraphs(pool.data, self.shape, act, pool.staging, capture=True) \
            if grouped == "graphs" else None

    # ---- whole-run hooks ----------------------------------------------------------------------------
    def preload_keys(self, keys: list) -> None:
        """Copy the experts a policy's setup asked for into the slots (counted apart from run loads)."""
        if len(keys) > self.pool.capacity:
            raise PolicyError(
                f"policy {self.policy.name!r} preloads {len(keys)} experts into {self.pool.capacity} slots"
            )
        for key in keys:
            if key not in self.pool:
                self.pool.load(key)
                self.metrics.preload_loads += 1

    def read_copies(self, wait: bool = False) -> None:
        """Takes the measured times of finished copies into the load costs and the current phase's counters, with
        the streams' waits around them (`SlotPool.copy_timings`; `wait`: all copies issued so far, for the end of a
        run)."""
        seconds, victim_wait, compute_wait = self.pool.copy_timings(wait)
        m = self.metrics[self.phase]
        if seconds:
            self.costs["load"].extend(seconds)
            m.copy_s += sum(seconds)
            m.copy_bytes += len(seconds) * self.pool.store.expert_bytes
        m.victim_wait_s += victim_wait
        m.copy_wait_s += compute_wait

    def close(self) -> None:
        self.cpu.shutdown(wait=True)

    # ---- one MoE layer ------------------------------------------------------------------------------
    def _cpu_compute(self, layer: int, x_host: torch.Tensor, jobs: list[tuple[int, list[int]]],
                     w: np.ndarray) -> tuple[torch.Tensor, float]:
        """Runs on the worker thread: x_host [T,H], jobs of (expert, its token rows [n]) in ascending expert order,
        gate weights w [T,E] float32 -> (the sum over the jobs of gate weight x output [T,H] in x's dtype, seconds).
        The sum is taken here, on the host, so the device gets one copy and one add for all of a layer's CPU
        experts rather than a scatter per expert."""
        t0 = time.perf_counter()
        out = weighted_expert_sum(x_host, jobs, partial(self.pool.store.expert, layer), w, self.shape, self.act)
        return out, time.perf_counter() - t0

    @torch.no_grad()
    def stage_scores(self, logits: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor) -> tuple:
        """logits [T,E], the router's top-k and its weights [T,K] -> the copy to the host of the scores [T,E]
        float32, the top-k and the weights, queued on the compute stream now (none where the routing is known)."""
        if self.known_routing is not None:
            return ()
        return self.pool.staging.start_to_host(self.family.scores(logits), topk_idx, topk_w)

    @torch.no_grad()
    def run_layer(self, layer, x, staged):
        with span("smoe.layer"):
            return self._run_layer(layer, x, staged)

    def _run_layer(self, layer, x, staged):
        # x [T,H]  staged: `stage_scores`' host copy under way
        m = self.metrics[self.phase]
        early_read, early_s = None, 0.0  # the next layer's early prediction: queued now, read with no wait of its own
        if self.early_predicts and self.phase == "decode" and self.predictor.next_layer(layer) is not None:
            t0 = time.perf_counter()
            with span("smoe.predict"):
                early_read = self.pool.staging.start_to_host(self.predictor.early(layer, x, self.early_attention),
                                                             channel="early")
            early_s = time.perf_counter() - t0
        with span("smoe.scores_to_host"):  # waits for the compute stream up to the router (and what came before it)
            # [T,E] float32 and [T,K] int64 as arrays, [T,K] gate weights in the model's dtype
            if self.known_routing is not None:
                host_scores, host_topk, host_topk_w = self.known_routing(layer)
            else:
                host_scores, host_topk, host_topk_w = self.pool.staging.finish_to_host(staged, arrays=2)
        view = LayerView(
            layer=layer,
            phase=self.phase,
            step=self.step,
            scores_np=host_scores,
            topk_np=host_topk,
            cache=self.view,
            model=self.info,
            costs=self.costs,
        )
        with span("smoe.copies_read"):
            self.read_copies()
        judged = [key for key in self.awaiting if key[0] == layer]  # prefetched for this layer: were they routed?
        # Prefetched since this layer last ran: their copies may still be in flight (the paper's pipeline
        # computes them after the prediction, "once PCIe completes"); a rule of the plan, not of timing.
        in_flight = {e for _, e in judged}
        if judged:
            routed = set().union(*view.routed)
            m.prefetch_in_topk += sum(1 for key in judged if key[1] in routed)
            self.awaiting.difference_update(judged)
        t0 = time.perf_counter()
        with span("smoe.plan"):
            plan = self.policy.plan(view)
            t1 = time.perf_counter()
            ex = check_plan(plan, view, self.policy.name)
        t2 = time.perf_counter()
        m.policy_time_s += t2 - t0
        m.check_time_s += t2 - t1

        with span("smoe.evict"):
            for key in ex.evict:
                self.pool.evict(key)
        order = ex.experts  # ascending
        tok = _TokenRows(ex, self._to_device)

        with span("smoe.gate_weights"):
            w = _GateWeights(self._gate_weights(view, host_topk_w, ex), host_topk_w.dtype, self._to_device)
        # CPU experts first, so the worker runs while the device computes and copies.
        cpu_experts = []
        cpu_future = None
        if _CPU in ex.codes:
            t_cpu = time.perf_counter()
            with span("smoe.cpu_submit"):  # waits for the compute stream up to this layer's input
                x_host = x.to("cpu")  # [T,H]
                jobs = [(e, ex.token_rows(i)) for i, (e, a) in enumerate(zip(order, ex.codes)) if a == _CPU]
                cpu_experts = [e for e, _ in jobs]
                cpu_future = self.cpu.submit(self._cpu_compute, layer, x_host, jobs, w.w)
            m.cpu_host_s += time.perf_counter() - t_cpu

        outs: dict[int, torch.Tensor] = {}
        pending = list(ex.loads)  # ascending ids, copied as soon as a slot is free
        issued: list[int] = []

        def issue() -> None:
            with span("smoe.load"):
                while pending and self.pool.free_slots > 0:
                    e = pending.pop(0)
                    m.bytes_h2d += self.pool.load((layer, e))
                    m.loads += 1
                    issued.append(e)

        def compute(e: int) -> None:
            key = (layer, e)
            with span("smoe.expert"):
                outs[e] = expert_forward(x[tok[e]], self.pool.weights(key), self.shape, self.act)
            self.pool.release(key)
            if e in ex.discard:
                self.pool.evict(key)
                issue()

        issue()  # copies start before any compute is queued, so they overlap the resident experts
        hits = []
        starts = ex.starts
        for i, (e, a) in enumerate(zip(order, ex.codes)):
            if a == _HIT:
                hits.append(e)
                m.hits += starts[i + 1] - starts[i]
                if (layer, e) in self.pool.prefetched:
                    m.prefetch_used += 1
        # Resident experts in two groups: those long resident first, then those prefetched for this layer,
        # whose copies may still be landing. The prediction of later layers reads only the first group's
        # output, so it never waits for a copy and the next prefetches queue behind the ones in flight.
        early = [e for e in hits if e not in in_flight]
        late = [e for e in hits if e in in_flight]
        group = self.grouped != "off" and self.phase == "decode"
        # the fewest experts worth a product: a captured one is one replay, cheaper than a lone expert's launches
        least = 1 if self.products is not None else 2
        summed: set[int] = set()  # experts whose weighted output hit_sum holds
        hit_sum = None  # [T,H]

        def add_hits(experts: list[int]) -> None:
            nonlocal hit_sum
            if group and len(experts) >= least:
                with span("smoe.grouped"):
                    part = self._grouped(layer, x, experts, w)  # [T,H]
                hit_sum = part if hit_sum is None else hit_sum + part
                summed.update(experts)
            else:
                for e in experts:
                    compute(e)

        add_hits(early)
        self.pool.mark_used((layer, e) for e in early)
        # Prefetch for later layers while this layer's loads are still copying.
        prefetched: list = []

        def partial() -> torch.Tensor:  # this layer's routed output so far [T,H]: its long-resident experts
            single = [e for e in early if e not in summed]
            if hit_sum is not None and not single:
                return hit_sum
            return self._combine(torch.zeros_like(x) if hit_sum is None else hit_sum.clone(), single, outs, tok, w)

        def queue_rest() -> None:  # the layer's other device work: its experts prefetched for it, then its loads
            if not ex.discard:  # every load has its slot: one group with the prefetched ones, after their copies
                add_hits(late + issued)
                issued.clear()
                return
            add_hits(late)
            while issued:  # each computed as its copy lands; a discarded one frees a slot for the next load
                compute(issued.pop(0))

        predicted = None
        if self.trace is not None and self.trace_predictions and self.phase == "decode" \
                and self.predictor is not None and self.predictor.replay is None:
            predicted = self._predictions(layer, x, partial())
        rest_queued = False
        if self.wants_prefetch and not pending:
            # A prediction queues the rest of the layer before it waits, so the device computes it while the host waits
            # and decides. Not in a layer that discards experts: that frees slots, which the prefetch must not see yet.
            rest_queued = not ex.discard
            ctx = PrefetchContext(layer, x, partial, self.predictor, self.pool.staging,
                                  then=queue_rest if rest_queued else None, early=early_read,
                                  early_key=self.early_key)
            t0 = time.perf_counter()
            with span("smoe.prefetch"):
                nxt = self.policy.prefetch(view, ctx)
            decide_s = time.perf_counter() - t0 - ctx.predict_s - ctx.then_s
            m.policy_time_s += decide_s
            m.prefetch_time_s += decide_s
            m.predict_time_s += ctx.predict_s + early_s
            m.predictions += ctx.predictions
            if nxt is not None:
                prefetched = self._prefetch(nxt, layer)
            ctx.finish_layer()
        if not rest_queued:
            queue_rest()
        self.pool.mark_used((layer, e) for e in late)  # after the prefetch, which counts them as not yet used
        assert not pending, "check_plan admitted loads without slots"

        unsummed = [e for e, a in zip(order, ex.codes) if a != _CPU and e not in summed]
        # hit_sum has no reader left (the prediction queued before has been read back): the rest is added in place
        with span("smoe.combine"):
            final = self._combine(torch.zeros_like(x) if hit_sum is None else hit_sum, unsummed, outs, tok, w)
        if cpu_future is not None:
            with span("smoe.cpu_wait"):
                cpu_sum, secs = cpu_future.result()  # [T,H] on the host
            t_cpu = time.perf_counter()
            m.cpu_time_s += secs
            m.cpu_experts += len(cpu_experts)
            self.costs["cpu"].append(secs / len(cpu_experts))
            with span("smoe.combine"):
                final.add_(self._to_device(cpu_sum))
            m.cpu_host_s += time.perf_counter() - t_cpu

        m.uses += len(ex.rows)
        m.substitutions += ex.substitutions
        m.skips += ex.skips
        t0 = time.perf_counter()
        self.policy.observe(view, plan)
        m.policy_time_s += time.perf_counter() - t0
        if self.trace is not None:
            self.trace.append(
                {
                    "step": self.step,
                    "phase": self.phase,
                    "layer": layer,
                    "scores": view.scores.half(),
                    "topk": view.topk.to(torch.int16),
                    "actions": torch.zeros(view.topk.shape, dtype=torch.int8) if plan.actions is None  # HIT
                    else torch.as_tensor(np.asarray(plan.actions, dtype=np.int8)),
                    "standins": None if plan.standins is None else torch.as_tensor(plan.standins),
                    "loads": ex.loads,
                    "cpu": cpu_experts,
                    "evict": ex.evict,
                    "prefetch": prefetched,
                    "predicted": predicted,
                }
            )
        return final

    def _grouped(self, layer: int, x: torch.Tensor, experts: list[int], w: "_GateWeights") -> torch.Tensor:
        """Sum over resident `experts` of gate weight x expert output, every token through every expert (a
        token that does not use one has weight 0 there): x [T,H], w [T,E] -> [T,H]. For decode, where T is the
        batch: the weights are read once either way, and the layer is a handful of kernels."""
        keys = [(layer, e) for e in experts]
        if self.grouped == "graphs":
            y = self.products(x, self.pool.await_slots(keys), w.w[:, experts].T, w.dtype)  # [T,H]
            self.pool.release_all(keys)
            return y
        if self.grouped == "slots":
            y = slot_grouped_forward(x, self.pool.data, self.pool.slot_index(keys), self.shape, self.act)  # [n,T,H]
        else:
            y = grouped_forward(x, self.pool.gather(keys), self.shape, self.act)  # [n,T,H]
        self.pool.release_all(keys)
        gate = w.columns(experts)  # [n,T]
        return (y * gate[..., None].to(y.dtype)).sum(0)

    @staticmethod
    def _combine(final, experts, outs, tok, w: "_GateWeights"):
        """final [T,H] += each expert's output times its gate weight, in ascending expert order (as HF does)."""
        for e in sorted(experts):
            final.index_add_(0, tok[e], (outs[e] * w.dense[tok[e], e, None]).to(final.dtype))
        return final

    def _gate_weights(self, view: LayerView, topk_w: torch.Tensor, ex) -> np.ndarray:
        """[T,E] float32 gate weights, on the host: the router's own (topk_w [T,K], exact in float32) where a token's
        set is unchanged, the family rule where the plan changed it (`ExecPlan.changed`)."""
        topk = view.topk_np  # [T,K]
        T = len(topk)
        if len(ex.changed) == T:  # every token's set changed (a batch-1 step that substitutes): the rule gives all
            scores = view.scores if ex.scale is None else torch.from_numpy(view.scores_np * ex.scale)  # [T,E]
            return self.weight_rule(scores, torch.from_numpy(ex.changed_mask)).numpy()
        w = np.zeros(view.scores_np.shape, dtype=np.float32)  # [T,E]
        rows = self._rows.get(T)
        if rows is None:  # kept per batch size: one arange less in every layer
            rows = self._rows[T] = np.arange(T)[:, None]  # [T,1]
        w[rows, topk] = topk_w.numpy() if topk_w.dtype == torch.float32 else topk_w.float().numpy()
        if ex.changed:
            changed_scores = view.scores_np[ex.changed]  # [n,E]
            if ex.scale is not None:
                changed_scores = changed_scores * ex.scale[ex.changed]
            w[ex.changed] = self.weight_rule(torch.from_numpy(changed_scores), torch.from_numpy(ex.changed_mask)).numpy()
        return w

    def _to_device(self, a) -> torch.Tensor:
        """Host array/tensor -> device, through the pool's pinned staging so the copy does not stall the host."""
        return self.pool.staging.to_device(a)

    LOOKAHEAD = 3  # MoE layers ahead whose predicted scores a trace records (HybriMoE at depth up to 3)

    def _predictions(self, layer: int, x: torch.Tensor, partial: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predictor's view from this point of a decode step, kept in the trace for routing replay:
        `attn1` the next MoE layer with its attention, `noattn{d}` the MoE layer d ahead without, `early1` the next
        MoE layer without this layer's routed experts (`NextLayerPredictor.early`), `earlyattn1` the same with the next
        layer's attention; each [T,E]."""
        layers = self.info.moe_layers
        i = layers.index(layer)
        out = {}
        if self.predictor.next_layer(layer) is not None:
            out[prediction_key(True, 1)] = self.predictor.predict(layer, x, partial, True).half().cpu()
            for attention in (False, True):
                out[early_key(attention)] = self.predictor.early(layer, x, attention).half().cpu()
        for d in range(1, self.LOOKAHEAD + 1):
            if i + d < len(layers):
                out[prediction_key(False, d)] = self.predictor.gate_scores(layer, x, partial, layers[i + d]).half().cpu()
        return out

    def _prefetch(self, nxt, layer: int) -> list:
        m = self.metrics[self.phase]
        done = []
        for key in nxt.evict:
            if key not in self.pool or key[0] == layer:
                raise PolicyError(f"policy {self.policy.name!r}: prefetch evicts {key}, not resident or in use")
            self.pool.evict(key)
        for key in nxt.loads:
            if key in self.pool:
                continue
            if self.pool.free_slots == 0:
                raise PolicyError(f"policy {self.policy.name!r}: prefetch of {key} finds no free slot")
            m.bytes_h2d += self.pool.load(key, prefetch=True)
            m.loads += 1
            m.prefetches += 1
            done.append(key)
            self.awaiting.add(key)
        return done


class _GateWeights:
    """A layer's gate weights [T,E], made on the host in float32 and sent to the device in the router weights' dtype
    as the computation needs them: the columns of a group of experts [n,T], or the whole [T,E] (once)."""

    def __init__(self, w: np.ndarray, dtype: torch.dtype, to_device):
        self.w, self.dtype, self.to_device = w, dtype, to_device
        self._dense: torch.Tensor | None = None

    def columns(self, experts: list[int]) -> torch.Tensor:
        """[n,T] the weights of these experts, on the device (one small copy)."""
        return self.to_device(torch.from_numpy(np.ascontiguousarray(self.w[:, experts].T)).to(self.dtype))

    @property
    def dense(self) -> torch.Tensor:
        """[T,E] on the device."""
        if self._dense is None:
            self._dense = self.to_device(torch.from_numpy(self.w).to(self.dtype))
        return self._dense


class _TokenRows:
    """expert -> its token rows on the device [n] int64, in the plan's order: every computed expert's rows go to
    the device in one asynchronous copy, made on first use (a decode layer whose experts all run grouped needs
    none)."""

    def __init__(self, ex: ExecPlan, to_device):
        self.ex, self.to_device = ex, to_device
        self.rows: dict[int, torch.Tensor] | None = None

    def __getitem__(self, e: int) -> torch.Tensor:
        if self.rows is None:
            ex = self.ex
            flat = self.to_device(np.asarray(ex.rows, dtype=np.int64))  # [n] every expert's rows, experts ascending
            sizes = [b - a for a, b in zip(ex.starts, ex.starts[1:])]
            self.rows = dict(zip(ex.experts, torch.split(flat, sizes)))
        return self.rows[e]
