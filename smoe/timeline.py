"""Where the device waits for the host: idle stretches of the device's compute, charged to what the host was doing.

Where it sits: an analysis of one profiled run (`benchmarks/paper_shape.py --profile`). The profiler gives the
device's kernels and the host's named spans (`smoe.*`, nested) on one clock. A stretch with no kernel running is
charged, instant by instant, to the innermost span the host was in, or to `(no span)`: the host time that the
device sat through. Pure functions over (start, end) pairs in microseconds, so they are tested without a device.
"""
from __future__ import annotations

from collections import defaultdict

NO_SPAN = "(no span)"


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) pairs -> their union as sorted, disjoint pairs."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """The total length covered by both of two merged, sorted interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def gaps(busy: list[tuple[float, float]], window: tuple[float, float]) -> list[tuple[float, float]]:
    """The stretches of `window` that no interval of `busy` (merged, sorted) covers."""
    lo, hi = window
    out, at = [], lo
    for a, b in busy:
        if b <= at:
            continue
        if a >= hi:
            break
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < hi:
        out.append((at, hi))
    return out


def innermost(spans: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Nested spans (start, end, name) of one thread -> sorted, disjoint segments, each named after the innermost
    span over it (a span that outlasts the one it starts in is cut at that one's end)."""
    out: list[tuple[float, float, str]] = []
    stack: list[tuple[float, str]] = []  # (end, name) of the open spans, innermost last
    at = 0.0

    def emit(until: float) -> None:
        nonlocal at
        if until > at:
            out.append((at, until, stack[-1][1]))
            at = until

    for a, b, name in sorted(spans, key=lambda s: (s[0], -s[1])):
        while stack and stack[-1][0] <= a:
            emit(stack[-1][0])
            stack.pop()
        if stack:
            emit(a)
            b = min(b, stack[-1][0])
        at = max(at, a)
        stack.append((b, name))
    while stack:
        emit(stack[-1][0])
        stack.pop()
    return out


def charge(stretches: list[tuple[float, float]], spans: list[tuple[float, float, str]]) -> dict[str, float]:
    """Each stretch's length (stretches sorted and disjoint), split among the innermost of the nested spans
    (start, end, name) the host was in over it, instant by instant; time in no span goes to `NO_SPAN`.
    -> {name: total length}."""
    segments = innermost(spans)
    out: dict[str, float] = defaultdict(float)
    j = 0
    for a, b in stretches:
        while j < len(segments) and segments[j][1] <= a:
            j += 1
        at, k = a, j
        while k < len(segments) and segments[k][0] < b:
            lo, hi, name = segments[k]
            if lo > at:
                out[NO_SPAN] += min(lo, b) - at
            out[name] += min(hi, b) - max(lo, at)
            at = min(hi, b)
            k += 1
        if at < b:
            out[NO_SPAN] += b - at
    return dict(out)
