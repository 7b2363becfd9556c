"""Random layer stacks, each flattened by both sources and compared with the kernel.

Stacks of 3 to 6 layers over a small name space, so that layers collide often:
whiteouts, opaque directories, type changes, hardlinks, xattrs. Where
containers-storage refuses a stack, the blobs source must refuse it too.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pybootc.sample.ocibuild import Layer
from tests.strategies import layers
from tests.support import Oracle

pytestmark = pytest.mark.oracle


@settings(
    max_examples=220,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stack=st.lists(layers(), min_size=3, max_size=6))
def test_random_stacks_match_the_kernel(oracle: Oracle, stack: list[Layer]) -> None:
    outcome = oracle.compare(stack)
    event("refused: " + outcome.kernel[-60:] if isinstance(outcome.kernel, str) else "flattened")
    outcome.assert_agree()
