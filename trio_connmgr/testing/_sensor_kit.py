"""The ``fake_sensors`` fixture's helper: script the sensing of a manager."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, final


def find_fake_sensors() -> ModuleType | None:
    """The module providing ``FakeSensor``, ``Reading`` and ``Sensing``, or ``None``.

    ``trio_connmgr.testing._sensors`` is preferred when it exists and has them;
    otherwise the public :mod:`trio_connmgr.sensing`.
    """
    import importlib

    for name in ("trio_connmgr.testing._sensors", "trio_connmgr.sensing"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if all(hasattr(module, attr) for attr in ("FakeSensor", "Reading")):
            return module
    return None


@final
class FakeSensors:
    """Fake sensors and a :class:`trio_connmgr.Sensing` to drive a manager with them.

    From the ``fake_sensors`` fixture, or ``FakeSensors()`` anywhere. Each fake
    sensor reports what the test sets (``ceiling``, ``pressure``, ``values``) or a
    script of readings, one per sample, the last repeating::

        disk = fake_sensors.sensor("disk")
        mgr = await connmgr_factory(
            limits=cm.Limits(low=10, high=20), sensing=fake_sensors.sensing(disk, interval=1)
        )
        disk.pressure = True
        await advance(1)                     # the next sample shrinks the share
        assert mgr.limits.high < 20

    Args:
        module: Where ``FakeSensor`` and ``Reading`` come from (default: found by
            :func:`find_fake_sensors`).

    Attributes:
        sensors: Every fake sensor created, in order.
        module: The module the fakes come from.

    Raises:
        RuntimeError: this trio_connmgr has no fake sensors.
    """

    def __init__(self, module: ModuleType | None = None) -> None:
        if module is None:
            module = find_fake_sensors()
            if module is None:
                raise RuntimeError("this trio_connmgr provides no fake sensors")
        self.module = module
        self.sensors: list[Any] = []

    def sensor(
        self,
        name: str | None = None,
        *,
        ceiling: int | None = None,
        pressure: bool = False,
        values: Mapping[str, float] | None = None,
        script: Iterable[Any] | None = None,
    ) -> Any:
        """A new fake sensor (named ``"fake-<n>"`` unless ``name`` is given).

        ``script``: readings (see :meth:`reading`) returned one per sample, the
        last one repeating.
        """
        if name is None:
            name = f"fake-{len(self.sensors) + 1}"
        sensor = self.module.FakeSensor(
            name, ceiling=ceiling, pressure=pressure, values=values, script=script
        )
        self.sensors.append(sensor)
        return sensor

    def reading(
        self,
        values: Mapping[str, float] | None = None,
        *,
        ceiling: int | None = None,
        pressure: bool = False,
        detail: str = "",
    ) -> Any:
        """A reading for a sensor's ``script``."""
        return self.module.Reading(dict(values or {}), ceiling, pressure, detail)

    def sensing(self, *sensors: Any, interval: float = 1.0, **options: Any) -> Any:
        """A :class:`trio_connmgr.Sensing` over ``sensors`` (a new fake one if none given).

        ``options`` are the other arguments of ``Sensing`` (``floor``,
        ``increase``, ``decrease``). Pass the result as ``sensing=`` when opening
        a manager; one ``Sensing`` drives one manager.
        """
        from trio_connmgr.sensing import Sensing

        if not sensors:
            sensors = (self.sensor(),)
        return Sensing(list(sensors), interval=interval, **options)
