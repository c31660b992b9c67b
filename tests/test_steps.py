"""The step tracker on its own (steps.py): a pure object, calls -> generation, step, stream."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taylorseer_fx.runtime.steps import MAX_STREAMS, StepTracker, batch_only_change

SIG2 = ((1, (2, 3), "f32", "cpu"),)
SIG1 = ((1, (1, 3), "f32", "cpu"),)
SIG_OTHER = ((1, (2, 4), "f32", "cpu"),)


def _places(calls, tracker=None):
    tr = tracker or StepTracker()
    return [tr.observe(*c) for c in calls]


def test_cfg_calls_are_streams_and_steps_follow_the_coordinate():
    ps = _places([(0, 9.0, SIG2), (0, 9.0, SIG2), (0, 8.0, SIG2), (0, 8.0, SIG2), (0, 7.0, SIG2)])
    assert [(p.step, p.stream) for p in ps] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert len({p.generation for p in ps}) == 1
    assert ps[2].transition == {0: 2} and ps[2].defer and ps[3].defer   # step 1 held until step 2
    assert ps[4].realign == {0: 0}                                        # as many streams: no shift


def test_a_dummy_call_is_dropped_when_step_1_has_fewer_calls():
    ps = _places([(0, 9.0, SIG2), (0, 9.0, SIG2), (0, 8.0, SIG2), (0, 7.0, SIG2)])
    assert ps[3].realign == {0: 1} and ps[3].transition == {0: 1}


def test_direction_reversal_and_non_batch_changes_start_generations():
    ps = _places([(0, 9.0, SIG2), (0, 8.0, SIG2), (0, 9.5, SIG2), (0, 8.0, SIG2), (0, 7.0, SIG_OTHER)])
    gens = [p.generation for p in ps]
    assert gens[0] == gens[1] < gens[2] == gens[3] < gens[4]
    assert [p.step for p in ps] == [0, 1, 0, 1, 0]


def test_a_batch_change_at_the_next_step_keeps_the_generation_and_restarts_the_graph():
    ps = _places([(0, 9.0, SIG2), (0, 8.0, SIG2), (0, 7.0, SIG1), (0, 6.0, SIG1)])
    assert len({p.generation for p in ps}) == 1 and [p.step for p in ps] == [0, 1, 2, 3]
    assert [p.restart for p in ps] == [False, False, True, False]
    same_step = _places([(0, 9.0, SIG2), (0, 9.0, SIG1)])             # at one step: a new generation
    assert same_step[0].generation != same_step[1].generation


def test_graphs_count_streams_apart_and_restart_after_a_gap():
    ps = _places([(0, 9.0, SIG2), (1, 9.0, SIG2), (0, 8.0, SIG2), (1, 8.0, SIG2), (0, 7.0, SIG2),
                  (0, 6.0, SIG2), (1, 6.0, SIG2)])
    assert [(p.step, p.stream, p.restart) for p in ps] == [
        (0, 0, False), (0, 0, False), (1, 0, False), (1, 0, False), (2, 0, False), (3, 0, False), (3, 0, True)]


def test_too_many_calls_at_one_coordinate_start_a_new_generation():
    ps = _places([(0, 5.0, SIG2)] * (2 * MAX_STREAMS + 1))
    assert [p.stream for p in ps] == list(range(MAX_STREAMS)) * 2 + [0]
    assert len({p.generation for p in ps}) == 3


def test_end_and_counted_positions():
    tr = StepTracker()
    a = tr.observe(0, 9.0, SIG2)
    tr.end()
    b = tr.observe(0, 8.0, SIG2)
    assert b.generation != a.generation and b.step == 0
    c = StepTracker().observe(0, 5.0, SIG2, counted=(5, 0))               # a session's late joiner
    assert c.step == 5
    tr = StepTracker()
    ps = [tr.observe(0, t, SIG2, counted=(s, k)) for s, t in enumerate((9.0, 8.0, 7.0)) for k in range(2)]
    assert [(p.step, p.stream) for p in ps] == [(s, k) for s in range(3) for k in range(2)]
    assert len({p.generation for p in ps}) == 1 and not any(p.defer for p in ps)
    again = tr.observe(0, 9.0, SIG2, counted=(0, 0))
    assert again.generation != ps[0].generation


def test_batch_only_change():
    assert batch_only_change(SIG2, SIG1)
    assert not batch_only_change(SIG2, SIG_OTHER)
    assert not batch_only_change(SIG2, SIG2 + SIG1)
    two = SIG2 + ((2, (2, 7), "f32", "cpu"),)
    assert batch_only_change(two, SIG1 + ((2, (1, 7), "f32", "cpu"),))
    assert not batch_only_change(two, SIG1 + ((2, (3, 7), "f32", "cpu"),))   # two different batch changes
    assert not batch_only_change(SIG2, ((1, (2, 3), "f16", "cpu"),))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6), st.sampled_from([SIG1, SIG2, SIG_OTHER])),
                min_size=1, max_size=60))
def test_positions_are_consistent_for_any_call_sequence(calls):
    """Generation ids only grow; in a generation the step grows by one per new coordinate and never
    goes back; each graph's streams at a step are 0, 1, 2, ... in call order, fewer than MAX_STREAMS;
    a new generation starts at step 0."""
    tr = StepTracker()
    last, streams = None, {}
    for graph, coord, sig in calls:
        p = tr.observe(graph, float(coord), sig)
        assert 0 <= p.stream < MAX_STREAMS
        if last is None or p.generation != last.generation:
            assert last is None or p.generation > last.generation
            assert p.step == 0 and p.stream == 0
            streams = {}
        else:
            assert p.step in (last.step, last.step + 1)
            if p.step == last.step + 1:
                streams = {}
                assert p.transition is not None
        assert p.stream == streams.get(graph, 0)
        streams[graph] = p.stream + 1
        last = p
