"""SMoE's CPU/PCIe balancing (paper Alg. 2, Eq. 4): split the missing experts of a layer between loading
over PCIe and computing on the CPU so that max(n_load * c_load, n_cpu * c_cpu) is small.

Where it sits: a pure function the SMoE policy calls from `plan` with its per-expert cost estimates (modelled,
or the rolling mean of the last p measurements the runtime keeps). High-score experts go over PCIe (they are
likely reused), low-score ones to the CPU.
"""
from __future__ import annotations

from .plan import ModelInfo

PCIE_GBPS = 25.0  # the fixed cost model's host->device rate on the machine's own link: the paper's S3 (A6000, PCIe 4.0)


def load_gbps(pcie_gbps: float | None, link_gbps: float | None) -> float:
    """The host->device rate the fixed cost model prices a load at: a policy's `pcie_gbps` where it sets one, else
    the link the run emulates, else `PCIE_GBPS`. A policy planning for an emulated 6 GB/s link prices a load as a
    machine with that link would, not as its default 25 GB/s."""
    return pcie_gbps if pcie_gbps is not None else link_gbps or PCIE_GBPS


def load_seconds(model: ModelInfo, pcie_gbps: float | None) -> float:
    """The fixed cost model's time to copy one expert of `model` to the device (`load_gbps`)."""
    return model.expert_bytes / (load_gbps(pcie_gbps, model.link_gbps) * 1e9)


def split_load_cpu(expert_ids: list[int], c_load: float, c_cpu: float) -> tuple[list[int], list[int]]:
    """expert_ids: missing experts sorted by score, highest first -> (load_ids, cpu_ids).

    Two pointers: while left <= right, if the accumulated load time <= the accumulated CPU time the left
    (highest) expert is loaded, else the right (lowest) one runs on the CPU.
    """
    if c_load < 0 or c_cpu < 0:
        raise ValueError(f"costs must be non-negative, got c_load={c_load}, c_cpu={c_cpu}")
    load_ids: list[int] = []
    cpu_ids: list[int] = []
    t_load = t_cpu = 0.0
    left, right = 0, len(expert_ids) - 1
    while left <= right:
        if t_load <= t_cpu:
            load_ids.append(expert_ids[left])
            t_load += c_load
            left += 1
        else:
            cpu_ids.append(expert_ids[right])
            t_cpu += c_cpu
            right -= 1
    return load_ids, cpu_ids[::-1]

