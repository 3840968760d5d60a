"""MoEfication: cut each dense SwiGLU FFN into shared experts and equal-size routed experts.

Where it sits: the first step of `heal` (which then trains what this initialises). Per layer, from the FFN's
activations h = silu(x Wg^T) * (x Wu^T) [T,N] on calibration text:
- shared: the S neurons most often among a token's most active quarter (always on);
- routed: the other N-S neurons grouped into E experts of equal size I by co-activation: balanced spherical
  k-means on each neuron's |activation| profile over the tokens (greedy capacity-bounded assignment);
- router: a least-squares map from the FFN input x to the log of each expert's activation mass, so the
  initial router already ranks experts roughly as an activation oracle would.
The result is a neuron order per layer: [shared S | expert 0 (I) | expert 1 (I) | ...].
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..errors import SmoeError


@dataclass(frozen=True)
class Topology:
    num_experts: int = 64
    top_k: int = 8
    shared: int = 384  # neurons in the always-on shared expert

    def expert_size(self, ffn: int) -> int:
        routed = ffn - self.shared
        if routed <= 0 or routed % self.num_experts:
            raise SmoeError(
                f"FFN width {ffn} minus shared {self.shared} = {routed} neurons does not split into "
                f"{self.num_experts} equal experts"
            )
        return routed // self.num_experts

    @property
    def name(self) -> str:
        return f"e{self.num_experts}k{self.top_k}s{self.shared}"

    def with_top_k(self, k: int) -> "Topology":
        """The same experts routed to `k` per token (a recipe healed at one top-k, run at another)."""
        if not 1 <= k <= self.num_experts:
            raise SmoeError(f"top-k {k} for {self.name}: accepted 1..{self.num_experts}")
        return replace(self, top_k=k)


@torch.no_grad()
def collect_ffn_io(model, input_ids: torch.Tensor, batch: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: FFN inputs x [T,H] and activations h [T,N] (float32, on the model's device) for `input_ids` [B,L]."""
    layers = model.model.layers
    xs: list[list[torch.Tensor]] = [[] for _ in layers]
    hs: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.mlp.register_forward_pre_hook(lambda m, a, i=i: xs[i].append(a[0].flatten(0, 1).float())))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: hs[i].append(a[0].flatten(0, 1).float())))
    try:
        for s in range(0, input_ids.shape[0], batch):
            model(input_ids[s:s + batch].to(model.device))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(x) for x in xs], [torch.cat(h) for h in hs]


def shared_neurons(h: torch.Tensor, count: int) -> torch.Tensor:
    """Ids of the `count` neurons most often in a token's top quarter by |activation|. h [T,N] -> [count]."""
    a = h.abs()
    thresh = a.kthvalue(int(0.75 * a.shape[1]), dim=1, keepdim=True).values  # [T,1]
    freq = (a >= thresh).float().mean(dim=0)  # [N]
    return torch.argsort(freq, descending=True, stable=True)[:count]


def balanced_kmeans(features: torch.Tensor, groups: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Equal-size clusters of unit vectors. features [M,D] (M divisible by groups) -> cluster id per row [M].

    Each iteration assigns (row, cluster) pairs greedily in order of decreasing cosine similarity, a cluster
    accepting rows until it holds M/groups, then moves each centroid to its members' normalised mean."""
    M = features.shape[0]
    cap = M // groups
    assert cap * groups == M
    f = F.normalize(features, dim=1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    centroids = f[torch.randperm(M, generator=g)[:groups].to(f.device)]  # [G,D]
    assign = torch.empty(M, dtype=torch.long, device=f.device)
    for _ in range(iters):
        sim = f @ centroids.T  # [M,G]
        order = torch.argsort(sim.flatten(), descending=True).cpu()
        taken = [False] * M
        fill = [0] * groups
        rows, cols = (order // groups).tolist(), (order % groups).tolist()
        new = [0] * M
        left = M
        for r, c in zip(rows, cols):
            if taken[r] or fill[c] >= cap:
                continue
            taken[r] = True
            fill[c] += 1
            new[r] = c
            left -= 1
            if not left:
                break
        assign = torch.tensor(new, device=f.device)
        centroids = F.normalize(torch.zeros_like(centroids).index_add_(0, assign, f), dim=1)
    return assign


def neuron_order(h: torch.Tensor, topo: Topology, seed: int = 0) -> torch.Tensor:
    """The layer's neuron permutation [N]: shared first, then each expert's neurons (ascending ids)."""
    N = h.shape[1]
    I = topo.expert_size(N)
    shared = shared_neurons(h, topo.shared)
    is_shared = torch.zeros(N, dtype=torch.bool, device=h.device)
    is_shared[shared] = True
    routed = torch.nonzero(~is_shared).flatten()  # [N-S]
    profile = h[:, routed].abs().T  # [N-S, T]
    profile = profile - profile.mean(dim=1, keepdim=True)
    assign = balanced_kmeans(profile, topo.num_experts, seed=seed)
    experts = [routed[assign == e].sort().values for e in range(topo.num_experts)]
    assert all(len(e) == I for e in experts)
    return torch.cat([shared.sort().values] + experts)


def init_router(x: torch.Tensor, h: torch.Tensor, order: torch.Tensor, topo: Topology) -> torch.Tensor:
    """Router weight [E,H] fitted by least squares: x [T,H] -> log expert activation mass [T,E], centred."""
    I = topo.expert_size(h.shape[1])
    mass = h[:, order[topo.shared:]].abs().reshape(h.shape[0], topo.num_experts, I).sum(-1)  # [T,E]
    target = mass.clamp_min(1e-6).log()
    target = target - target.mean(dim=1, keepdim=True)
    ridge = 1e-3 * torch.eye(x.shape[1], device=x.device)
    w = torch.linalg.solve(x.T @ x / len(x) + ridge, x.T @ target / len(x))  # [H,E]
    return w.T.contiguous()
