"""The share controller: sensor readings in, the next global share out (SPEC §9).

Everything here is synchronous and pure: :func:`decide_share` maps the current
share and one round of :class:`Reading` objects to a :class:`Decision`. The Trio
layer (:class:`trio_connmgr.sensing.Sensing`) samples the sensors on its
interval, calls it, and applies the decision to the state.

The rule is AIMD, as in TCP congestion control:

* ``ceiling = max(floor, min(high, every sensor's ceiling))``;
* under pressure (any reading has ``pressure=True``):
  ``share' = min(share - 1, floor(share * decrease))``;
* healthy: ``share' = share + increase``;
* and always ``floor <= share' <= ceiling``.

The floor wins over a sensor's ceiling: it is the user's promise that the share
never collapses below a useful size, whatever a noisy signal says.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import final

import attrs

from .._config import check_bool, exact_floor
from .._errors import ConfigError

RESERVED_FIGURES = frozenset({"pressure", "ceiling", "errors"})
"""Figure names ``statistics().sensors`` gives a sensor's pressure, ceiling and
errors under: a reading's own figures may not use them."""


def _frozen_values(values: Mapping[str, float] | None) -> Mapping[str, float]:
    if values is None:
        return MappingProxyType({})
    if not isinstance(values, Mapping):
        raise ConfigError(f"Reading.values must be a mapping of str to float, got {values!r}")
    checked: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"Reading.values keys must be strings, got {key!r}")
        if key in RESERVED_FIGURES:
            raise ConfigError(
                f"Reading.values must not hold a figure named {key!r}: statistics().sensors "
                f"reports the reading's {key} under that name"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"Reading.values[{key!r}] must be a number, got {value!r}")
        try:
            checked[key] = float(value)
        except OverflowError:  # an int beyond the float range
            raise ConfigError(
                f"Reading.values[{key!r}] must be a number within the float range, got {value!r}"
            ) from None
    return MappingProxyType(checked)


def _values_key(values: Mapping[str, float]) -> frozenset[tuple[str, float]]:
    """What readings compare and hash their figures by (a read-only mapping has no hash)."""
    return frozenset(values.items())


@final
@attrs.frozen
class Reading:
    """What one sensor saw at one sample (frozen and hashable).

    Attributes:
        values: The measured figures, by name (for example ``{"open": 57.0,
            "limit": 1024.0}``); they appear in ``statistics().sensors``. The
            names ``pressure``, ``ceiling`` and ``errors`` are taken there by the
            reading's pressure, ceiling and error count (a ConfigError here).
        ceiling: The most connections this signal allows, or ``None`` if it does
            not bound the count. The controller never lets the share exceed the
            smallest ceiling.
        pressure: Whether the signal says "too much, back off now". Any reading
            under pressure makes the controller shrink the share multiplicatively.
        detail: A short human-readable note (why it is under pressure).
    """

    values: Mapping[str, float] = attrs.field(
        factory=dict, converter=_frozen_values, eq=_values_key
    )
    ceiling: int | None = None
    pressure: bool = False
    detail: str = ""

    def __attrs_post_init__(self) -> None:
        ceiling = self.ceiling
        if ceiling is not None and (
            isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 0
        ):
            raise ConfigError(
                f"Reading.ceiling must be a non-negative integer or None, got {ceiling!r}"
            )
        check_bool("Reading.pressure", self.pressure)


@final
@attrs.frozen
class Decision:
    """The controller's answer for one interval.

    Attributes:
        share: The new global share (effective ``high``).
        ceiling: The ceiling it was held under (already raised to the floor).
        pressure: Whether any reading was under pressure.
        cause: Why the share moves (``None`` when it does not): ``"sensing
            pressure (names)"``, ``"sensing ceiling (names)"`` (``"sensing
            ceiling (floor)"`` when the floor holds it) or ``"sensing recovery"``.
        pressing: Names of the sensors under pressure.
        limiting: Names of the sensors whose ceiling is the binding one; none
            when no sensor's ceiling is below ``high``, or when the floor is above
            the lowest one (then the floor binds).
    """

    share: int
    ceiling: int
    pressure: bool
    cause: str | None
    pressing: tuple[str, ...] = ()
    limiting: tuple[str, ...] = ()


def decide_share(
    share: int,
    readings: Mapping[str, Reading],
    *,
    high: int,
    floor: int,
    increase: int,
    decrease: float,
) -> Decision:
    """The next global share: additive increase when healthy, multiplicative decrease
    under pressure, held within ``[floor, ceiling]``.

    Args:
        share: The current global share.
        readings: This interval's readings, by sensor name (failed sensors left out).
        high: The configured ``high`` (the ceiling when no sensor bounds the count).
        floor: The share never goes below this (it wins over sensor ceilings).
        increase: Connections added per healthy interval.
        decrease: Factor in ``(0, 1)`` applied per interval under pressure.
    """
    ceiling = high
    for reading in readings.values():
        if reading.ceiling is not None and reading.ceiling < ceiling:
            ceiling = reading.ceiling
    # A sensor's ceiling binds unless the floor is above it: then the floor does.
    limiting = tuple(
        name
        for name, reading in readings.items()
        if reading.ceiling is not None and reading.ceiling == ceiling < high and ceiling >= floor
    )
    ceiling = max(ceiling, floor)
    pressing = tuple(name for name, reading in readings.items() if reading.pressure)
    # Multiplicative decrease moves at least one connection; additive increase
    # moves exactly `increase`.
    target = min(share - 1, exact_floor(share * decrease)) if pressing else share + increase
    new = min(max(target, floor), ceiling)
    cause = None
    if new != share:
        if pressing and new < share:
            cause = f"sensing pressure ({', '.join(pressing)})"
        elif new < share:
            cause = f"sensing ceiling ({', '.join(limiting) or 'floor'})"
        else:
            cause = "sensing recovery"
    return Decision(new, ceiling, bool(pressing), cause, pressing, limiting)
