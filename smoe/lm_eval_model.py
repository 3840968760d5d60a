"""lm-eval model `smoe`: accuracy through the offloading runtime, with any policy.

Where it sits: lm-eval calls it like any model (`lm_eval.simple_evaluate(model="smoe", model_args=...)` or
`lm_eval --model smoe`; `import smoe.lm_eval_model` registers it). Every forward runs through the same
runtime and policy as the latency runs, so substitution changes the answers exactly as it does there.

model_args: pretrained (a local checkpoint directory), policy (default all-gpu), budget_gb or cache_experts,
device (cpu | cuda), batch_size, max_length, and any policy parameter (e.g. alpha=0.25), as strings.
After a run, `lm.run_metrics()` gives the runtime's counters over everything it scored and generated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from .runtime import Runtime


@register_model("smoe")
class SMoELM(TemplateLM):
    def __init__(self, pretrained: str, policy: str = "all-gpu", budget_gb=None, cache_experts=None,
                 device: str = "cpu", batch_size=1, max_length=None, **policy_params):
        super().__init__()
        self.batch_size = int(batch_size)
        if budget_gb is None and cache_experts is None:
            cache_experts = 1 << 30  # every expert resident unless a budget is given
        self.rt = Runtime(
            pretrained, policy, device=device, batch=self.batch_size,
            budget_gb=None if budget_gb is None else float(budget_gb),
            cache_experts=None if cache_experts is None else int(cache_experts),
            policy_params={k: str(v) for k, v in policy_params.items()},
        )
        self.tok = self.rt.tokenizer
        limit = self.rt.ckpt.config.get_text_config().max_position_embeddings
        self.max_length = int(max_length) if max_length else limit
        self._started = False

    # ---- tokenization -----------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_token_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    # ---- scoring ------------------------------------------------------------------------------------------
    def _accumulate(self) -> bool:
        started, self._started = self._started, True
        return started

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        for i in tqdm(range(0, len(requests), self.batch_size), disable=disable_tqdm, desc="smoe loglikelihood"):
            chunk = requests[i : i + self.batch_size]
            seqs, conts = [], []
            for _, ctx, cont in chunk:
                whole = (ctx + cont)[-(self.max_length + 1):]
                seqs.append(whole[:-1])
                conts.append(cont)
            logits = self.rt.forward_logits(seqs, accumulate=self._accumulate())  # [B,S,V], left-padded
            S = logits.shape[1]
            for b, cont in enumerate(conts):
                n = len(cont)
                logprobs = F.log_softmax(logits[b, S - n:].float(), dim=-1)  # [n,V]
                target = torch.tensor(cont, device=logprobs.device)
                total = float(logprobs.gather(1, target[:, None]).sum())
                greedy = bool((logprobs.argmax(-1) == target).all())
                out.append((total, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="smoe rolling"):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(self.tok_encode(string), self.prefix_token_id, self.max_length, 1)
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for i in tqdm(range(0, len(requests), self.batch_size), disable=disable_tqdm, desc="smoe generate"):
            chunk = [r.args for r in requests[i : i + self.batch_size]]
            gen = chunk[0][1]  # lm-eval groups requests of one task: the same generation arguments
            until = gen.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(gen.get("max_gen_toks", 64))
            ids = [self.tok_encode(ctx)[-(self.max_length - n_new):] for ctx, _ in chunk]

            def done(tokens: torch.Tensor) -> bool:  # [B,n]: every sequence has met a stop string
                return bool(until) and all(any(s in self.tok_decode(row.tolist()) for s in until if s)
                                           for row in tokens)

            res = self.rt.generate(ids, n_new, accumulate=self._accumulate(), stop=done)
            for toks in res.tokens:
                text = self.tok_decode(toks)
                cut = min([text.find(s) for s in until if s and s in text], default=len(text))
                out.append(text[:cut])
        return out

    def run_metrics(self) -> dict:
        """The runtime's counters over every forward of this evaluation (hit rate, substitutions, ...)."""
        return self.rt.engine.metrics.summary()
