"""The rescue's budget on empty frames: blind steps spread over frames, paid from a bounded credit.

Costs are fixed estimates (in first passes), so these checks are exact and never timed.
"""

import numpy as np

from device.scanner.decode import BLIND_LOOKS, BLIND_SHARE, BLIND_TURNS, CREDIT_CAP, ZxingDecoder
from device.scanner.synthetic import render_empty_frame


def _empty(n, seed=4):
    rng = np.random.default_rng(seed)
    return [render_empty_frame(rng, 640, 480) for _ in range(n)]


def test_blind_steps_cost_at_most_their_share_on_average():
    frames = _empty(60)
    dec = ZxingDecoder(second_pass_budget_ms=1000.0)
    for f in frames:
        assert dec.decode(f) == []
    spent = dec.stats["blind_cost"]
    assert spent <= BLIND_SHARE * len(frames) + CREDIT_CAP + 1e-9
    assert spent >= BLIND_SHARE * len(frames) * 0.5  # and the budget is used, not left idle


def test_every_blind_step_comes_in_turn_within_a_second_of_frames():
    """A code held in view for about a second (15 frames at 15 fps) meets every dearer step."""
    dec = ZxingDecoder(second_pass_budget_ms=1000.0)
    seen = set()
    for f in _empty(15):
        before = dec._next_turn
        dec.decode(f)
        if dec._next_turn != before:
            seen.add(before)
    assert seen == set(range(len(BLIND_TURNS)))


def test_the_looks_run_on_every_empty_frame():
    frames = _empty(20)
    dec = ZxingDecoder(second_pass_budget_ms=1000.0)
    for f in frames:
        dec.decode(f)
    # every frame pays its cheap looks, the rest of the credit goes to the steps in turn
    assert dec.stats["blind_steps"] >= len(frames) * len(BLIND_LOOKS)


def test_no_rescue_when_turned_off():
    dec = ZxingDecoder(second_pass=False)
    for f in _empty(5):
        dec.decode(f)
    assert dec.stats["blind_steps"] == 0 and dec.stats["blind_cost"] == 0.0
