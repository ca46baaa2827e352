"""The adaptive control law, as pure functions (``_limits/control.py``).

No clock, no I/O: each property of the law is checked on the numbers it
produces.  The end-to-end behaviour (a limiter in front of simulated
servers) is in ``test_adaptive.py``; against real servers in
``bench/bench_pushback.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest

from resilient_smtp._limits.control import (
    CUBIC,
    PROBE,
    RAMP,
    STARTUP,
    Control,
    Cut,
    Law,
    advance,
    congestion,
    measured,
    peak_between,
    resumed,
)

LAW = Law()


def cut_info(
    s: Control,
    *,
    now: float,
    measured: float | None,
    since_cut: int = 10,
    growth: float | None = None,
    delivered: int = 1000,
    first_delivery: float = 0.0,
    stall: float = 0.0,
    peak: float | None = None,
    law: Law = LAW,
) -> tuple[Control, Cut]:
    """:func:`congestion` with this file's usual inputs (growth = now)."""
    return congestion(
        law,
        s,
        now=now,
        growth=now if growth is None else growth,
        delivered=delivered,
        since_cut=since_cut,
        measured=measured,
        first_delivery=first_delivery,
        stall=stall,
        peak=peak,
    )


def cut(s: Control, *, now: float, measured: float | None, **kw: Any) -> Control:
    return cut_info(s, now=now, measured=measured, **kw)[0]


def paced(target: float, hits: int = 0) -> Control:
    """A destination in its CUBIC phase around ``target``, pacing at it."""
    return Control(
        phase=CUBIC,
        pace=target,
        target=target,
        confirmed=True,
        k=2.0,
        hits=hits,
        left_startup=0.0,
    )


def test_startup_is_not_paced() -> None:
    s = Control()
    assert s.phase == STARTUP and s.pace == math.inf
    assert advance(LAW, s, growth=100.0, took=50.0) is s  # no curve before a pushback


def test_the_cut_goes_to_what_the_server_took() -> None:
    # Pacing at 200/s while the server took 40/s: one cut lands under 40,
    # not at 0.9 x 200.
    new, info = cut_info(paced(200.0), now=10.0, delivered=500, since_cut=20, measured=40.0)
    assert new.phase == CUBIC
    assert new.target == 40.0
    assert new.pace == pytest.approx(LAW.beta * 40.0)
    assert info.old_rate == 200.0 and info.measured_rate == 40.0


def test_the_cut_never_goes_above_the_pace_granted() -> None:
    new = cut(paced(30.0), now=10.0, measured=80.0)  # a burst of old answers
    assert new.target == 30.0


def test_nothing_through_since_the_cut_probes_with_a_doubling_gap() -> None:
    s = cut(paced(40.0), now=10.0, measured=40.0)
    gaps = []
    for i in range(8):
        s = cut(s, now=11.0 + i, measured=40.0, since_cut=0)
        assert s.phase == PROBE
        assert s.target == 40.0  # the target is kept while probing
        gaps.append(s.probe_gap)
    assert gaps[0] >= LAW.min_probe_gap
    for a, b in itertools.pairwise(gaps):
        assert b == pytest.approx(min(2 * a, LAW.max_probe_gap))
    assert gaps[-1] == LAW.max_probe_gap
    assert s.pace == pytest.approx(1.0 / LAW.max_probe_gap)


def test_the_same_ceiling_again_backs_off_probing() -> None:
    # Cut at the plateau, again and again, at about the same rate: the time
    # to the plateau (and so to the next probe above it) doubles each time.
    s = paced(40.0)
    ks = []
    for i in range(4):
        s = dataclass_replace(s, pace=1.05 * s.target)  # probing above the plateau
        s = cut(s, now=10.0 * (i + 1), measured=40.0 - 0.2 * i)
        ks.append(s.k)
    assert [round(b / a, 6) for a, b in itertools.pairwise(ks)] == [2.0, 2.0, 2.0]
    assert s.hits == 4


def test_a_different_ceiling_starts_the_back_off_over() -> None:
    s = paced(40.0, hits=3)
    s = dataclass_replace(s, pace=42.0)
    lower = cut(s, now=10.0, measured=25.0)  # the limit dropped
    assert lower.hits == 0
    higher = cut(s, now=10.0, measured=41.9)  # more room than last time
    assert higher.hits == 0
    again = cut(s, now=10.0, measured=39.0)
    assert again.hits == 4


def test_a_cut_on_the_way_up_is_not_the_same_ceiling() -> None:
    # Refused below the plateau (pace 0.9 x target): a lower limit, not a
    # repeat, even if what it took is close.
    s = dataclass_replace(paced(40.0, hits=2), pace=36.0)
    assert cut(s, now=10.0, measured=36.0).hits == 0


def test_back_off_is_bounded() -> None:
    s = paced(40.0, hits=100)
    s = dataclass_replace(s, pace=41.0)
    s = cut(s, now=10.0, measured=40.0)
    base = max(LAW.recovery_time, LAW.recovery_messages / 40.0)
    assert s.k == pytest.approx(base * 2**LAW.max_backoff)


def test_resumption_after_an_unpaced_burst_measures_the_whole_cycle() -> None:
    # A fixed window let 120 through at once (measured: 600/s), then refused
    # everything; the first delivery after probing comes 3 s after the first
    # one: the server sustains 120 per 3 s.
    s = cut(Control(), now=0.2, growth=0.0, delivered=120, since_cut=0, measured=600.0)
    assert s.target == 600.0 and not s.confirmed
    s = cut(s, now=0.3, measured=600.0, since_cut=0)
    assert s.phase == PROBE
    back = resumed(LAW, s, now=3.0, growth=1.0, delivered=121, measured=None)
    assert back.phase == RAMP
    assert back.target == pytest.approx(120 / 3.0)
    assert back.confirmed
    assert back.pace <= LAW.beta * back.target


def test_a_window_that_opens_again_after_a_long_spell_is_sent_at_once() -> None:
    # 600 let through at once, then everything refused from 0.3 s to 60 s:
    # a window that opened again.  The pace is off until the next pushback
    # (its count goes at once, as at the start), and that pushback measures
    # the new cycle.  After a target confirmed while paced (a rate, not a
    # window), the pace comes back as before.
    s = cut(Control(), now=0.2, growth=0.0, delivered=600, since_cut=0, measured=3000.0)
    s = cut(s, now=0.3, measured=3000.0, since_cut=0)
    assert s.phase == PROBE and s.refusing_since == 0.3
    s = cut(s, now=4.0, measured=None, since_cut=0)  # a refused probe: the spell goes on
    assert s.refusing_since == 0.3
    reopened = resumed(LAW, s, now=60.0, growth=1.0, delivered=601, measured=None)
    assert reopened.phase == STARTUP and reopened.pace == math.inf
    assert reopened.target == pytest.approx(600 / 60.0)
    assert not reopened.confirmed  # a window's cycle, not a rate
    capped = Law(max_rate=50.0)
    assert resumed(capped, s, now=60.0, growth=1.0, delivered=601, measured=None).pace == 50.0
    # A shorter spell: a window all the same if its count is large (its
    # end's few refusals are a small share of it), unless the spell ended
    # at the first probe (a token bucket refilled); a small count is paced.
    soon = 0.3 + LAW.span / 2
    assert resumed(LAW, s, now=soon, growth=1.0, delivered=601, measured=None).phase == STARTUP
    first = dataclass_replace(s, probe_gap=LAW.min_probe_gap)
    assert resumed(LAW, first, now=soon, growth=1.0, delivered=601, measured=None).phase == RAMP
    few = dataclass_replace(s, cycle_delivered=500)
    assert resumed(LAW, few, now=soon, growth=1.0, delivered=601, measured=None).phase == RAMP
    confirmed = dataclass_replace(s, confirmed=True, target=10.0)
    assert (
        resumed(LAW, confirmed, now=60.0, growth=1.0, delivered=601, measured=None).phase == RAMP
    )
    # The next window's pushback ends this start like the first one.
    again = cut(reopened, now=61.1, delivered=1201, since_cut=600, measured=3000.0, stall=1.0)
    assert again.phase == CUBIC
    assert again.target == pytest.approx(601 / 1.1)  # the probe opened this cycle


def test_resumption_keeps_a_target_measured_while_paced() -> None:
    s = cut(paced(40.0), now=10.0, measured=40.0)
    s = cut(s, now=10.1, measured=40.0, since_cut=0)
    back = resumed(LAW, s, now=60.0, growth=20.0, delivered=2000, measured=35.0)
    assert back.target == 40.0


def test_the_ramp_doubles_back_then_the_curve_flattens_at_the_target() -> None:
    s = dataclass_replace(paced(40.0), phase=RAMP, pace=5.0, ramp_from=5.0, epoch=0.0, k=2.0)
    s1 = advance(LAW, s, growth=LAW.doubling_time, took=None)
    assert s1.pace == pytest.approx(10.0)
    s2 = advance(LAW, s1, growth=1.0, took=None)
    assert s2.phase == CUBIC
    assert s2.pace == pytest.approx(LAW.beta * 40.0)
    plateau = advance(LAW, s2, growth=1.0 + s2.k, took=40.0)
    assert plateau.pace == pytest.approx(40.0)


def test_growth_is_held_to_a_little_above_what_the_server_takes() -> None:
    s = dataclass_replace(paced(40.0), k=1.0, epoch=0.0, pace=40.0)
    far = advance(LAW, s, growth=10.0, took=40.0)  # the curve would be far above
    assert far.pace == pytest.approx(LAW.probe_gain * 40.0)


def test_the_floor_and_the_ceiling_hold() -> None:
    law = Law(min_rate=2.0, max_rate=50.0)
    s = cut(Control(pace=50.0), now=1.0, growth=0.0, delivered=10, measured=0.5, law=law)
    assert s.pace == 2.0
    up = advance(law, dataclass_replace(s, phase=CUBIC, k=1.0), growth=100.0, took=None)
    assert up.pace == 50.0


def dataclass_replace(s: Control, **kw: object) -> Control:
    return dataclasses.replace(s, **kw)  # type: ignore[arg-type]


def test_a_guessed_target_is_replaced_by_what_was_measured_since() -> None:
    # Pushed back before anything was measured: the target is a guess (the
    # initial rate).  At resumption the delivery meter says 95/s: the guess
    # is no ceiling, the measure replaces it.
    s, info = cut_info(
        Control(),
        now=0.1,
        growth=0.0,
        delivered=3,
        since_cut=0,
        measured=None,
        first_delivery=0.05,
    )
    assert s.phase == PROBE and s.target == LAW.initial_rate and info.probing
    back = resumed(LAW, s, now=0.3, growth=0.1, delivered=5, measured=95.0)
    assert back.target == 95.0 and back.confirmed


def test_a_probe_that_costs_a_long_pause_waits_on_the_plateau() -> None:
    # A server that sat 1 s on each refusal (a fixed window, Postfix's
    # error sleep): a probe above the ceiling stalls the destination for
    # that long, so the curve stays at the target 1 / (1 - beta) = 10 s
    # longer before it probes.  A server that refuses at once is probed as
    # soon as CUBIC says.
    def after(stall: float) -> Control:
        # A new ceiling: no back-off.
        return cut(
            dataclass_replace(paced(80.0), pace=110.0), now=10.0, measured=100.0, stall=stall
        )

    prompt, paused = after(0.0), after(1.0)
    assert prompt.hits == paused.hits == 0
    assert prompt.hold == 0.0
    assert paused.hold == pytest.approx(1.0 / (1.0 - LAW.beta))
    at = 10.0 + paused.k + 5.0  # past K, inside the hold
    assert advance(LAW, prompt, growth=at, took=None).pace > 100.0
    assert advance(LAW, paused, growth=at, took=None).pace == pytest.approx(100.0)
    later = advance(LAW, paused, growth=at + paused.hold, took=None)
    assert later.pace > 100.0  # then it probes, along the same curve
    assert later.pace == pytest.approx(advance(LAW, prompt, growth=at, took=None).pace)
    # Before K the hold changes nothing: the way back to the target is the same.
    assert advance(LAW, paused, growth=10.5, took=None).pace == pytest.approx(
        advance(LAW, prompt, growth=10.5, took=None).pace
    )
    # A pause of minutes does not stop probing for ever.
    assert after(1e6).hold == LAW.max_hold


def test_a_prompt_refusal_sets_the_target_at_the_peak_a_paused_one_at_the_average() -> None:
    # Paced up to 108/s along the curve: over the span the meter read 93/s
    # (the slower way up), over the last quarter second 104/s.  A server
    # that refused at once (a token bucket) took 104/s at its best: that is
    # the target.  One that sat 1 s on its refusal (a fixed window) gets the
    # average: a target above its count would cost a pause on every way up.
    def after(stall: float, peak: float | None) -> Control:
        return cut(
            dataclass_replace(paced(95.0), pace=108.0),
            now=10.0,
            measured=93.0,
            stall=stall,
            peak=peak,
        )

    assert after(0.0, 104.0).target == 104.0
    assert after(0.0, 90.0).target == 93.0  # the higher of the two
    assert after(0.0, None).target == 93.0
    assert after(1.0, 104.0).target == 93.0
    assert after(0.0, 130.0).target == 108.0  # never above the pace granted


def test_the_end_of_a_slow_start_takes_the_pace_when_refused_at_once() -> None:
    # Doubling toward an unknown target, refused at 126/s: what got through
    # over the last stretch reads about half the pace.  A server that
    # refused at once sets the target at the pace (TCP's window at the
    # loss); one that paused keeps the measure.
    ramp = Control(phase=RAMP, pace=126.0, target=10.0, confirmed=False, k=2.0, left_startup=0.0)

    def after(stall: float) -> Control:
        return cut(
            ramp, now=1.0, delivered=60, since_cut=50, measured=40.0, stall=stall, peak=70.0
        )

    assert after(0.0).target == 126.0
    assert after(0.0).pace == pytest.approx(LAW.beta * 126.0)
    assert after(1.0).target == 40.0


def test_the_end_of_an_unpaced_start_the_server_sat_on_measures_the_whole_cycle() -> None:
    # Unpaced, a fixed window let its 100 through at once (1600/s over the
    # burst), then sat 1 s on the first refusal: the burst is not a rate,
    # the cycle to now is (100 in 1.1 s).  A refusal at once (a token
    # bucket's) keeps the burst's measure; the next cut corrects it.
    def after(stall: float) -> Control:
        return cut(Control(), now=1.1, delivered=100, since_cut=100, measured=1600.0, stall=stall)

    paused = after(1.0)
    assert paused.phase == CUBIC
    assert paused.target == pytest.approx(100 / 1.1)
    assert paused.pace == pytest.approx(LAW.beta * 100 / 1.1)
    assert not paused.confirmed  # still read on an unpaced start
    assert after(0.0).target == 1600.0
    # A start that trickled for an hour before its first burst met the
    # window: its lifetime average (1/s) is no measure of the server.
    trickled = cut(Control(), now=3600.0, delivered=3600, since_cut=3600, measured=95.0, stall=1.0)
    assert trickled.target == 95.0


def test_a_stretch_with_too_few_deliveries_reads_the_whole_span() -> None:
    # One delivery a second, a refusal the server sat on for 2 s: the 2 s
    # up to the refused send hold too few deliveries to say anything, the
    # whole 4 s to now say 1/s (not "nothing measured", which would probe).
    times = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]

    def count(start: float, end: float) -> tuple[int, float]:
        return sum(start <= x < end for x in times), end - start

    s = Control(phase=CUBIC, pace=2.0, target=2.0, cycle_start=0.5)
    rate = measured(LAW, s, now=7.0, sent=5.0, count=count)
    assert rate == pytest.approx(4 / 4.0)


def test_a_slow_start_doubles_up_to_twice_what_the_server_takes() -> None:
    # Toward an unknown target the ramp doubles every doubling_time, held
    # to startup_gain times the delivery rate just measured (TCP's slow
    # start doubles what got through each round trip).
    s = Control(phase=RAMP, pace=10.0, target=10.0, confirmed=False, ramp_from=10.0, k=2.0)
    fast = advance(LAW, s, growth=1.0, took=None)
    assert fast.pace == pytest.approx(10.0 * 2 ** (1.0 / LAW.doubling_time))
    held = advance(LAW, s, growth=1.0, took=40.0)
    assert held.pace == pytest.approx(LAW.startup_gain * 40.0)


def test_nothing_measured_probes_at_the_shortest_gap_when_refused_at_once() -> None:
    def first(stall: float) -> Control:
        return cut(
            Control(),
            now=0.05,
            growth=0.0,
            delivered=2,
            since_cut=0,
            measured=None,
            first_delivery=0.01,
            stall=stall,
        )

    assert first(0.0).phase == PROBE
    assert first(0.0).probe_gap == LAW.min_probe_gap
    assert first(1.0).probe_gap == pytest.approx(2.0 / LAW.initial_rate)  # half a guess


def test_the_peak_is_read_since_the_last_cut() -> None:
    # Refused again 50 ms after a cut: what went before the cut went at the
    # pace already acted on; the peak is read over what went since.
    s = dataclass_replace(paced(100.0), cut_at=9.95)
    assert peak_between(LAW, s, sent=10.0) == (9.95, 10.0)
    assert peak_between(LAW, paced(100.0), sent=10.0) == (10.0 - LAW.peak_span, 10.0)
    resumed_late = dataclass_replace(paced(100.0), cycle_start=9.9)
    assert peak_between(LAW, resumed_late, sent=10.0) == (9.9, 10.0)


def test_the_hold_backs_off_with_the_same_ceiling_found_again() -> None:
    s = paced(100.0)
    holds = []
    for i in range(3):
        s = dataclass_replace(s, pace=1.1 * s.target)  # probing above the plateau
        s = cut(
            s,
            now=20.0 * (i + 1),
            delivered=1000 * (i + 1),
            since_cut=100,
            measured=100.0,
            stall=1.0,
        )
        holds.append(s.hold)
    base = 1.0 / (1.0 - LAW.beta)
    assert holds == pytest.approx([2 * base, 4 * base, 8 * base])


def test_a_coarse_target_re_measured_a_little_higher_is_the_same_ceiling() -> None:
    # The target came from an unpaced start (not confirmed); the next cut
    # reads 6 % more: that is the same limit measured better, not more room.
    coarse = dataclass_replace(paced(94.0), confirmed=False, pace=110.0)
    assert cut(coarse, now=20.0, measured=99.6).hits == 1
    confirmed = dataclass_replace(paced(94.0), pace=110.0)
    assert cut(confirmed, now=20.0, measured=99.6).hits == 0  # clearly more room
