"""Scorers for tests: well-behaved ones, and garbage-returning or raising ones (flagged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, final

import attrs

from .._config import check_count, check_fraction
from .._errors import ConfigError

if TYPE_CHECKING:
    from .._core._state import Stream


class TestScorer:
    """Base class of the scorers the toolkit generates.

    Attributes:
        well_behaved: ``True`` if it always returns a float in ``[0, 1]``;
            ``False`` for the ones that return garbage or raise (SPEC §12.6 says
            a round must survive them: the manager uses the neutral 0.5 or clamps).
    """

    __test__ = False  # not a pytest test class, whatever its name says
    well_behaved: ClassVar[bool] = True

    def __call__(self, stream: Stream) -> Any:
        """Score ``stream``."""
        raise NotImplementedError


def _constant_value(value: object) -> float:
    return check_fraction("ConstantScorer.value", value)


def _metadata_default(value: object) -> float:
    return check_fraction("MetadataScorer.default", value)


def _salt(value: object) -> int:
    # (Beyond 2**53 a float no longer tells neighbouring salts apart.)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**53:
        raise ConfigError(f"IdScorer.salt must be an integer in (-2**53, 2**53), got {value!r}")
    return value


@final
@attrs.frozen
class ConstantScorer(TestScorer):
    """Returns ``value`` for every stream.

    ``value`` must be a number in ``[0, 1]`` (else :class:`~trio_connmgr.ConfigError`:
    this scorer is well-behaved; :class:`GarbageScorer` returns anything).
    """

    value: float = attrs.field(converter=_constant_value)

    def __call__(self, stream: Stream) -> float:
        """Return ``value``."""
        return self.value


@final
@attrs.frozen
class IdScorer(TestScorer):
    """A deterministic spread of scores in ``[0, 1)``, from the stream id and ``salt``.

    ``salt`` must be an integer in (-2**53, 2**53) (else
    :class:`~trio_connmgr.ConfigError`).
    """

    salt: int = attrs.field(default=0, converter=_salt)

    def __call__(self, stream: Stream) -> float:
        """Return a pseudo-random but reproducible score for ``stream``."""
        return ((stream.id + self.salt) * 0.6180339887498949) % 1.0


@final
@attrs.frozen
class MetadataScorer(TestScorer):
    """Returns ``stream.metadata[key]`` if set (the protocol's own rating), else ``default``.

    ``default`` must be a number in ``[0, 1]`` (else :class:`~trio_connmgr.ConfigError`).
    """

    key: str = "score"
    default: float = attrs.field(default=0.5, converter=_metadata_default)

    def __call__(self, stream: Stream) -> float:
        """Return the stored score, or the default."""
        value = stream.metadata.get(self.key, self.default)
        return float(value)


@final
@attrs.frozen
class GarbageScorer(TestScorer):
    """Returns ``value`` whatever it is: NaN, infinities, out-of-range numbers, non-numbers."""

    well_behaved: ClassVar[bool] = False
    value: Any

    def __call__(self, stream: Stream) -> Any:
        """Return the garbage."""
        return self.value


@final
@attrs.frozen
class RaisingScorer(TestScorer):
    """Raises ``RuntimeError(message)`` on every ``every``-th call (1: always).

    ``every`` must be a positive integer (else :class:`~trio_connmgr.ConfigError`).
    """

    well_behaved: ClassVar[bool] = False
    message: str = "scorer failure"
    every: int = 1
    _calls: list[int] = attrs.field(factory=lambda: [0], eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_count("RaisingScorer.every", self.every)

    def __call__(self, stream: Stream) -> float:
        """Raise, or return 0.5 between failures."""
        self._calls[0] += 1
        if self._calls[0] % self.every == 0:
            raise RuntimeError(self.message)
        return 0.5
