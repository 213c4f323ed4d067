"""[depth_schedule] resolution: each order, start = "warmup_end", explicit lists, and bad schedules."""

from __future__ import annotations

import pytest

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.archwarm.schedule import ScheduleError, bit_reversal_order, resolve_schedule


def plan(n_layers=8, warmup=100, **kw):
    return resolve_schedule(DepthSchedule(enabled=True, **kw), n_layers, warmup)


def test_default_half_depth_until_warmup_end_then_groups_every_interval():
    p = plan(n_layers=16, warmup=2000)
    assert p.initial == tuple(range(8))
    assert [(e.step, e.layers) for e in p.events] == [
        (2000, (8, 9)), (2500, (10, 11)), (3000, (12, 13)), (3500, (14, 15))]
    assert p.active_after(2499) == set(range(10)) and p.active_after(3500) == set(range(16))


def test_orders():
    assert plan(order="top_down", group_size=2, initial_layers=4).initial == (4, 5, 6, 7)
    assert plan(order="top_down", group_size=2, initial_layers=4).events[0].layers == (2, 3)
    inter = plan(order="interleaved", initial_layers=4, group_size=2)
    assert inter.initial == (0, 2, 4, 6) and inter.events[0].layers == (1, 5)
    assert bit_reversal_order(16)[:8] == [0, 8, 4, 12, 2, 10, 6, 14]
    assert sorted(bit_reversal_order(6)) == list(range(6))
    explicit = plan(order=[7, 6, 0, 1, 2, 3, 4, 5], initial_layers=2, group_size=3, start=10, interval=5)
    assert explicit.initial == (6, 7)
    assert [(e.step, e.layers) for e in explicit.events] == [(10, (0, 1, 2)), (15, (3, 4, 5))]


def test_explicit_unlocks():
    p = plan(unlocks=[{"step": 5, "layers": [6, 7]}, {"step": 9, "layers": [3]}])
    assert p.initial == (0, 1, 2, 4, 5)
    assert [(e.step, e.layers) for e in p.events] == [(5, (6, 7)), (9, (3,))]


@pytest.mark.parametrize("kw, key, words", [
    ({"unlocks": [{"step": 5, "layers": [6]}, {"step": 5, "layers": [7]}]}, "unlocks", "steps increase"),
    ({"unlocks": [{"step": 5, "layers": [8]}]}, "unlocks", "out of range"),
    ({"unlocks": [{"step": 5, "layers": [6]}, {"step": 7, "layers": [6]}]}, "unlocks", "unlocked twice"),
    ({"unlocks": [{"step": 5, "layers": [6], "lr": 1}]}, "unlocks", "exactly the keys"),
    ({"unlocks": [{"step": 5, "layers": list(range(8))}]}, "unlocks", "at least one must be active"),
    ({"order": [0, 1, 2]}, "order", "every block"),
    ({"initial_layers": 9}, "initial_layers", "exceeds"),
])
def test_bad_schedules(kw, key, words):
    with pytest.raises(ScheduleError) as info:
        plan(**kw)
    assert info.value.key == key and words in info.value.why


def test_warmup_end_without_warmup_is_an_error():
    with pytest.raises(ScheduleError, match="give a step"):
        plan(warmup=0)


def test_disabled_means_everything_active():
    p = resolve_schedule(DepthSchedule(enabled=False), 4, 10)
    assert p.initial == (0, 1, 2, 3) and p.events == ()


def test_untrained_blocks_of_a_shortened_run():
    p = plan(unlocks=[{"step": 5, "layers": [6, 7]}, {"step": 9, "layers": [3]}])
    assert p.untrained_blocks(100) == [] and p.untrained_blocks(9) == [3]
    assert p.untrained_blocks(5) == [3, 6, 7]
