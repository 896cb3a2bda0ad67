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
