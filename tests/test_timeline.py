"""smoe.timeline: device idle stretches and their charge to the host's innermost span."""
import pytest

from smoe import timeline


def test_merge_joins_overlapping_and_touching_intervals():
    assert timeline.merge([(5, 7), (0, 2), (1, 3), (3, 4), (9, 10)]) == [(0, 4), (5, 7), (9, 10)]
    assert timeline.merge([]) == []


def test_overlap_is_the_length_both_lists_cover():
    assert timeline.overlap([(0, 4), (5, 7), (9, 10)], [(2, 6), (6.5, 9.5)]) == pytest.approx(2 + 1 + 0.5 + 0.5)
    assert timeline.overlap([(0, 1)], [(1, 2)]) == 0
    assert timeline.overlap([], [(0, 1)]) == 0


def test_gaps_are_the_uncovered_parts_of_the_window():
    busy = [(0, 4), (5, 7), (9, 10)]
    assert timeline.gaps(busy, (2, 12)) == [(4, 5), (7, 9), (10, 12)]
    assert timeline.gaps(busy, (5, 7)) == []
    assert timeline.gaps([], (1, 3)) == [(1, 3)]


def test_charge_splits_a_stretch_among_innermost_spans():
    spans = [
        (0, 100, "smoe.layer"),
        (10, 30, "smoe.plan"),
        (50, 60, "smoe.predict"),
        (52, 55, "smoe.inner"),
        (120, 130, "op aten::mm"),
    ]
    got = timeline.charge([(5, 25), (40, 58), (95, 125)], spans)
    assert got == pytest.approx({
        "smoe.layer": 5 + 10 + 5,  # 5-10, 40-50, 95-100
        "smoe.plan": 15,  # 10-25
        "smoe.predict": 2 + 3,  # 50-52, 55-58
        "smoe.inner": 3,
        timeline.NO_SPAN: 20,  # 100-120
        "op aten::mm": 5,
    })
    # every instant of every stretch is charged once
    assert sum(got.values()) == pytest.approx(20 + 18 + 30)


def test_charge_finds_a_long_span_that_starts_well_before_the_stretch():
    spans = [(0, 1000, "smoe.decode")] + [(i, i + 1, f"short{i}") for i in range(10, 900, 10)]
    assert timeline.charge([(950, 960)], spans) == {"smoe.decode": 10}
    assert timeline.charge([(5, 12), (19.5, 20.5)], spans) == pytest.approx(
        {"smoe.decode": 5 + 1 + 0.5, "short10": 1, "short20": 0.5})


def test_innermost_cuts_a_span_at_its_parents_end():
    assert timeline.innermost([(0, 10, "a"), (2, 4, "b"), (8, 12, "c"), (11, 13, "d")]) == [
        (0, 2, "a"), (2, 4, "b"), (4, 8, "a"), (8, 10, "c"), (11, 13, "d")]
