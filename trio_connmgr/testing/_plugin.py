"""The trio_connmgr pytest plugin (registered through the ``pytest11`` entry point).

Installing trio_connmgr makes these fixtures available to every test suite
that uses pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on each
test). Loading the plugin imports the ``trio_connmgr`` package; the testing
toolkit behind the fixtures is imported only when a fixture is used.

- ``connmgr``: a manager open for the whole test. Configure it with the
  ``connmgr`` marker: ``@pytest.mark.connmgr(limits=cm.Limits(2, 4), grace_period=0)``.
- ``connmgr_factory``: opens managers on demand (``await connmgr_factory(limits=...)``),
  all closed at the end of the test.
- ``fake_connections``: in-memory connections held open by tasks
  (``await fake_connections.open(mgr)``).
- ``peer_ids``: a factory of readable peer ids (``peer_ids()`` → ``"peer-1"``).
- ``fake_sensors``: fake sensors and a ``Sensing`` to script the environment.

Example::

    import pytest
    import trio_connmgr as cm
    from trio_connmgr.testing import advance, assert_pruned

    @pytest.mark.connmgr(limits=cm.Limits(low=2, high=4), grace_period=10)
    async def test_idle_connections_go(connmgr, fake_connections, autojump_clock):
        conns = await fake_connections.open_many(connmgr, 5)
        await advance(10)
        assert_pruned(conns[:3], phase="idle")
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

# Options of open_connection_manager whose objects keep state from one manager
# to the next (a sensing controller, admission buckets, triggers' history).
_STATEFUL_OPTIONS = ("sensing", "admission", "triggers")
# Those objects, by id, once a connmgr fixture has used them (kept alive, so an
# id is never reused for another object during the session).
_used_options = pytest.StashKey[dict[int, object]]()

if TYPE_CHECKING:
    from trio_connmgr import ConnectionManager
    from trio_connmgr.testing import FakeConnections, ManagerFactory, PeerIds

    from ._sensor_kit import FakeSensors


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``connmgr`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        "connmgr(**options): arguments of open_connection_manager for the `connmgr` "
        "fixture (limits=..., grace_period=..., ...)",
    )


@pytest.fixture
async def connmgr_factory() -> AsyncIterator[ManagerFactory]:
    """Open connection managers on demand; all are closed when the test ends.

    Call it with the arguments of :func:`trio_connmgr.open_connection_manager`
    (``limits`` defaults to ``Limits(low=4, high=8)``); each manager stays open
    until the end of the test, or until ``await connmgr_factory.close(mgr)``::

        async def test_two_nodes(connmgr_factory, fake_connections):
            small = await connmgr_factory(limits=cm.Limits(low=1, high=2), grace_period=0)
            large = await connmgr_factory(limits=cm.Limits(low=50, high=100))
            ...
    """
    from trio_connmgr.testing import open_manager_factory

    async with open_manager_factory() as factory:
        yield factory


@pytest.fixture
async def connmgr(
    connmgr_factory: ManagerFactory, request: pytest.FixtureRequest
) -> ConnectionManager:
    """A connection manager open for the whole test.

    Its arguments come from the closest ``connmgr`` marker (default: only
    ``limits=Limits(low=4, high=8)``; a method's marker replaces its class's or
    module's, it is not merged with them). A marker's values are shared by every
    test it applies to, so a stateful ``sensing``, ``admission`` or trigger in
    it serves one test only (a second raises ``pytest.UsageError``): build those
    in the test with ``connmgr_factory``::

        @pytest.mark.connmgr(limits=cm.Limits(low=2, high=4), grace_period=0)
        async def test_prunes(connmgr, fake_connections):
            conns = await fake_connections.open_many(connmgr, 5)
            ...
    """
    marker = request.node.get_closest_marker("connmgr")
    if marker is not None and marker.args:
        raise pytest.UsageError(
            "the connmgr marker takes keyword arguments only "
            "(those of open_connection_manager), got positional ones"
        )
    options = dict(marker.kwargs) if marker is not None else {}
    _claim_stateful_options(request, options)
    return await connmgr_factory(**options)


def _claim_stateful_options(request: pytest.FixtureRequest, options: dict[str, object]) -> None:
    """Refuse a stateful option object that an earlier test's ``connmgr`` used.

    A marker's values are built once and shared by every test it applies to (a
    module's ``pytestmark``, a class, a parametrized test): a ``Sensing``, an
    ``Admission`` or a trigger would carry one test's state into the next, and
    results would depend on the order the tests run in.
    """
    used = request.config.stash.setdefault(_used_options, {})
    for name in _STATEFUL_OPTIONS:
        value = options.get(name)
        objects = value if name == "triggers" and isinstance(value, (list, tuple)) else [value]
        for obj in objects:
            if obj is None:
                continue
            if id(obj) in used:
                raise pytest.UsageError(
                    f"the connmgr marker's {name}={obj!r} was already used by an earlier "
                    "test's manager: a marker's values are shared by every test it applies "
                    "to, and this one would carry that test's state. Build it in each test "
                    "(await connmgr_factory(..., " + name + "=...)) or in a fixture."
                )
            used[id(obj)] = obj


@pytest.fixture
async def fake_connections(peer_ids: PeerIds) -> AsyncIterator[FakeConnections]:
    """In-memory connections on any manager, each held open by a task until it closes.

    ::

        async def test_it(connmgr, fake_connections):
            conn = await fake_connections.open(connmgr)              # peer "peer-1", inbound
            out = await fake_connections.open(connmgr, "boot", direction="outbound")
            tracked = fake_connections.track(connmgr)                # mgr.track(...) + close()
            await fake_connections.close(conn)                       # the remote hung up

    At the end of the test every connection still open is closed from the remote side.
    """
    from trio_connmgr.testing import open_fake_connections

    async with open_fake_connections(peers=peer_ids) as connections:
        yield connections


@pytest.fixture
def peer_ids() -> PeerIds:
    """A factory of readable peer ids: ``peer_ids()`` → ``"peer-1"``, ``"peer-2"``, ...

    The same counter gives ``fake_connections`` its default peers, so an id
    from here never lands on a fake connection's default peer (or the other way).
    """
    from trio_connmgr.testing import PeerIds

    return PeerIds()


@pytest.fixture
def fake_sensors() -> FakeSensors:
    """Fake sensors to script sensing, and a ``Sensing`` that drives a manager with them.

    ::

        async def test_pressure_shrinks(connmgr_factory, fake_sensors, autojump_clock):
            sensor = fake_sensors.sensor(pressure=True)
            mgr = await connmgr_factory(
                limits=cm.Limits(low=10, high=20), sensing=fake_sensors.sensing(sensor)
            )
            await advance(1)
            assert mgr.limits.high < 20

    Skipped (with the reason) if this trio_connmgr has no fake sensors.
    """
    from ._sensor_kit import FakeSensors, find_fake_sensors

    module = find_fake_sensors()
    if module is None:
        pytest.skip(
            "the fake_sensors fixture needs trio_connmgr.testing._sensors or "
            "trio_connmgr.sensing.FakeSensor, which this trio_connmgr does not provide"
        )
    return FakeSensors(module)
