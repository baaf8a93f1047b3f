"""The well-behaved test scorers refuse values that would make them misbehave.

``TestScorer.well_behaved`` promises a float in ``[0, 1]`` for every stream:
a property test reads it to tell which scorers may make the manager clamp or
fall back to the neutral score. A constant or default outside ``[0, 1]`` is a
:class:`ConfigError` naming the field, never a scorer flagged well-behaved
that returns garbage.
"""

from __future__ import annotations

import math

import pytest

import trio_connmgr as cm
from trio_connmgr.testing import ConstantScorer, IdScorer, MetadataScorer

BAD = [1.5, -0.1, math.nan, math.inf, "0.5", True, None]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_a_constant_scorer_refuses_a_value_outside_0_1(value: object) -> None:
    with pytest.raises(cm.ConfigError, match=r"ConstantScorer\.value .*" + repr(value)[:3]):
        ConstantScorer(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_a_metadata_scorer_refuses_a_default_outside_0_1(value: object) -> None:
    with pytest.raises(cm.ConfigError, match=r"MetadataScorer\.default .*" + repr(value)[:3]):
        MetadataScorer(default=value)  # type: ignore[arg-type]


def test_the_ends_of_0_1_are_scores() -> None:
    assert ConstantScorer(0).value == 0.0
    assert ConstantScorer(1).value == 1.0
    assert MetadataScorer(default=1).default == 1.0


@pytest.mark.parametrize("salt", [math.nan, 1.5, "1", True, 2**53, -(2**53)])
def test_an_id_scorer_refuses_a_salt_that_is_no_small_integer(salt: object) -> None:
    with pytest.raises(cm.ConfigError, match=r"IdScorer\.salt must be an integer"):
        IdScorer(salt)  # type: ignore[arg-type]


def test_an_id_scorer_takes_any_integer_salt_a_float_tells_apart() -> None:
    assert IdScorer(2**53 - 1).salt == 2**53 - 1
    assert IdScorer(-7).salt == -7
