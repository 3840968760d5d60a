"""SMoE's CPU/PCIe balancing (paper Alg. 2, Eq. 4): split the missing experts of a layer between loading
over PCIe and computing on the CPU so that max(n_load * c_load, n_cpu * c_cpu) is small.

Where it sits: a pure function the SMoE policy calls from `plan` with its per-expert cost estimates (modelled,
or the rolling mean of the last p measurements the runtime keeps). High-score experts go over PCIe (they are
likely reused), low-score ones to the CPU.
"""
from __future__ import annotations


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

