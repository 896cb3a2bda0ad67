"""The seeded source of weights and dropout masks."""

import numpy as np

from gpucnn.backend import to_numpy
from gpucnn.random import Random


def test_random_state_round_trip_reproduces_draws(xp):
    random = Random(5, xp)
    random.uniform((3,), xp.float32)
    state = random.get_state()
    first = to_numpy(random.uniform((4, 2), xp.float32))
    random.set_state(state)
    np.testing.assert_array_equal(to_numpy(random.uniform((4, 2), xp.float32)), first)
    assert not np.array_equal(to_numpy(Random(6, xp).uniform((4, 2), xp.float32)), first)


def test_splitmix64_matches_the_published_sequence():
    # splitmix64 seeded with 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4 (Vigna's reference)
    from gpucnn.random import GOLDEN, splitmix64

    assert splitmix64(GOLDEN) == 0xE220A8397B1DCDAF
    assert splitmix64(2 * GOLDEN % 2**64) == 0x6E789E6AA1B965F4


def test_dropout_draws_are_the_same_on_every_backend(xp):
    for dtype in ("float32", "float64"):
        here = to_numpy(Random(3, xp).uniform((5, 7), getattr(xp, dtype)))
        reference = Random(3, np).uniform((5, 7), getattr(np, dtype))
        assert here.dtype == reference.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(here, reference)


def test_dropout_draws_are_uniform_and_independent_between_draws(xp):
    random = Random(11, xp)
    first = to_numpy(random.uniform((400, 500), xp.float32))
    second = to_numpy(random.uniform((400, 500), xp.float32))
    assert 0.0 <= first.min() and first.max() < 1.0
    for rate in (0.1, 0.5, 0.9):
        assert abs(np.mean(first < rate) - rate) < 0.005  # 200,000 samples: ~5 sigma
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(first.ravel()[:-1], first.ravel()[1:])[0, 1]) < 0.01
