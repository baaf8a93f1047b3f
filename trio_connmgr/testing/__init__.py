"""Tools for testing protocols against trio_connmgr without a network.

Everything here runs on a real manager with in-memory connections, under
pytest-trio's ``autojump_clock`` or a manual ``trio.testing.MockClock``:

- peers and connections: :class:`PeerIds`, :func:`open_fake_connection`,
  :class:`FakeConnections` / :func:`open_fake_connections`;
- managers that live until the end of a test: :class:`ManagerFactory` /
  :func:`open_manager_factory`;
- fake sensors to script sensing: :class:`FakeSensors`;
- time and rounds: :func:`advance`, :func:`settle`, :func:`wait_idle`,
  :func:`force_round` (a :class:`RoundResult`), :func:`record_rounds`;
- assertions: :func:`assert_pruned`, :func:`assert_not_pruned`,
  :func:`assert_open`, :func:`describe`, and :func:`check_invariants` (SPEC §12);
- scorers for tests (:class:`ConstantScorer`, :class:`GarbageScorer`, ...)
  and workloads as data (:mod:`trio_connmgr.testing.workload`) applied by
  :func:`run_workload`; the Hypothesis strategies live in
  :mod:`trio_connmgr.testing.strategies`.

The pytest plugin (``trio_connmgr.testing._plugin``, loaded automatically when
trio_connmgr is installed) provides the fixtures ``connmgr``,
``connmgr_factory``, ``fake_connections``, ``peer_ids`` and ``fake_sensors``.
See the "Testing your protocol" page of the documentation.
"""

# The names are imported on first use (PEP 562), so that importing the pytest
# plugin (``trio_connmgr.testing._plugin``) at pytest start-up stays light.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asserts import assert_not_pruned as assert_not_pruned
    from ._asserts import assert_open as assert_open
    from ._asserts import assert_pruned as assert_pruned
    from ._asserts import describe as describe
    from ._connections import FakeConnections as FakeConnections
    from ._connections import PeerIds as PeerIds
    from ._connections import open_fake_connection as open_fake_connection
    from ._connections import open_fake_connections as open_fake_connections
    from ._invariants import check_invariants as check_invariants
    from ._managers import DEFAULT_LIMITS as DEFAULT_LIMITS
    from ._managers import ManagerFactory as ManagerFactory
    from ._managers import open_manager_factory as open_manager_factory
    from ._scorers import ConstantScorer as ConstantScorer
    from ._scorers import GarbageScorer as GarbageScorer
    from ._scorers import IdScorer as IdScorer
    from ._scorers import MetadataScorer as MetadataScorer
    from ._scorers import RaisingScorer as RaisingScorer
    from ._scorers import TestScorer as TestScorer
    from ._sensor_kit import FakeSensors as FakeSensors
    from ._time import RoundRecorder as RoundRecorder
    from ._time import RoundResult as RoundResult
    from ._time import advance as advance
    from ._time import force_round as force_round
    from ._time import record_rounds as record_rounds
    from ._time import settle as settle
    from ._time import wait_idle as wait_idle
    from .workload import WorkloadReport as WorkloadReport
    from .workload import run_workload as run_workload

_EXPORTS = {
    "assert_not_pruned": "._asserts",
    "assert_open": "._asserts",
    "assert_pruned": "._asserts",
    "describe": "._asserts",
    "FakeConnections": "._connections",
    "PeerIds": "._connections",
    "open_fake_connection": "._connections",
    "open_fake_connections": "._connections",
    "check_invariants": "._invariants",
    "DEFAULT_LIMITS": "._managers",
    "ManagerFactory": "._managers",
    "open_manager_factory": "._managers",
    "ConstantScorer": "._scorers",
    "FakeSensors": "._sensor_kit",
    "GarbageScorer": "._scorers",
    "IdScorer": "._scorers",
    "MetadataScorer": "._scorers",
    "RaisingScorer": "._scorers",
    "TestScorer": "._scorers",
    "RoundRecorder": "._time",
    "RoundResult": "._time",
    "advance": "._time",
    "force_round": "._time",
    "record_rounds": "._time",
    "settle": "._time",
    "wait_idle": "._time",
    "WorkloadReport": ".workload",
    "run_workload": ".workload",
}

__all__ = [
    "DEFAULT_LIMITS",
    "ConstantScorer",
    "FakeConnections",
    "FakeSensors",
    "GarbageScorer",
    "IdScorer",
    "ManagerFactory",
    "MetadataScorer",
    "PeerIds",
    "RaisingScorer",
    "RoundRecorder",
    "RoundResult",
    "TestScorer",
    "WorkloadReport",
    "advance",
    "assert_not_pruned",
    "assert_open",
    "assert_pruned",
    "check_invariants",
    "describe",
    "force_round",
    "open_fake_connection",
    "open_fake_connections",
    "open_manager_factory",
    "record_rounds",
    "run_workload",
    "settle",
    "wait_idle",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
