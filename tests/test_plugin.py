"""The pytest plugin, tested the way plugins are: generated test files run by pytester."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
trio_mode = true
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
"""

# A small protocol under test, written into the generated files: it keeps the
# peers of its routing table and runs lookups as bursts.
PROTOCOL = '''
import trio
import trio_connmgr as cm


class Kad:
    """Routing-table peers score 1.0, others by recency; lookups run as bursts."""

    def __init__(self, table, *, broken=False):
        self.table = table
        self.broken = broken
        self.enrollment = None  # set by: async with mgr.enroll(..., scorer=kad.score)

    def score(self, stream):
        in_table = stream.connection.peer in self.table
        if self.broken:
            in_table = not in_table  # the bug: keeps strangers, drops its table
        return 1.0 if in_table else 0.1

    def join(self, conn):
        return self.enrollment.track_stream(conn)

    async def lookup(self, conns):
        async with self.enrollment.burst("lookup") as burst:
            for conn in conns:
                async with self.enrollment.stream(conn, burst=burst) as stream:
                    stream.touch(nbytes=64)
                    await trio.sleep(0.01)
'''


def write_suite(pytester: pytest.Pytester, tests: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(kad=PROTOCOL)
    pytester.makepyfile(test_kad=textwrap.dedent(tests))


def test_the_entry_point_loads_the_plugin(pytester: pytest.Pytester) -> None:
    """No ``-p`` needed: installing trio_connmgr registers the plugin (pytest11)."""
    pytester.makeini(INI)
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["*fixtures defined from trio_connmgr.testing._plugin*"])
    for name in ("connmgr", "connmgr_factory", "fake_connections", "fake_sensors", "peer_ids"):
        result.stdout.fnmatch_lines([f"{name} -- *trio_connmgr/testing/_plugin.py:*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.connmgr(**options)*"])


def test_a_protocol_suite_using_the_fixtures_passes(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        """
        import pytest
        import trio
        import trio_connmgr as cm
        from trio_connmgr.testing import (
            advance, assert_not_pruned, assert_pruned, check_invariants, force_round,
            record_rounds,
        )
        from kad import Kad

        KAD = "/ipfs/kad/1.0.0"


        @pytest.mark.connmgr(limits=cm.Limits(low=4, high=8), grace_period=1, silence_period=0)
        async def test_lookup_connections_go_first(connmgr, fake_connections, autojump_clock):
            table = {"a", "b", "c", "d"}
            kad = Kad(table)
            quota = cm.Quota(2, 8)
            async with connmgr.enroll(KAD, quota=quota, scorer=kad.score) as kad.enrollment:
                members = [await fake_connections.open(connmgr, p) for p in sorted(table)]
                for conn in members:
                    kad.join(conn)
                strangers = await fake_connections.open_many(connmgr, 8)
                async with record_rounds(connmgr) as rounds:
                    await kad.lookup(strangers)
                    await advance(1)
                assert_pruned(strangers, phase="burst", protocol=KAD)
                assert_not_pruned(members)
                check_invariants(connmgr, last_round=rounds.last)


        async def test_scorer_keeps_the_table(connmgr_factory, fake_connections, peer_ids):
            mgr = await connmgr_factory(limits=cm.Limits(low=3, high=6), grace_period=0)
            kad = Kad({"a", "b", "c"})
            async with mgr.enroll(KAD, quota=cm.Quota(0, 6), scorer=kad.score) as kad.enrollment:
                members = [await fake_connections.open(mgr, p) for p in "abc"]
                # Newer and outbound: were the scorer ignored, these would stay.
                others = [
                    await fake_connections.open(mgr, peer_ids(), direction="outbound")
                    for _ in range(3)
                ]
                for conn in members + others:
                    kad.join(conn)
                result = await force_round(mgr)
                assert_pruned(others, phase="tally")
                assert_not_pruned(members)
                check_invariants(mgr, last_round=result)


        async def test_fake_sensors_drive_the_share(
            connmgr_factory, fake_sensors, autojump_clock
        ):
            sensor = fake_sensors.sensor("router", pressure=True)
            mgr = await connmgr_factory(
                limits=cm.Limits(low=10, high=20), sensing=fake_sensors.sensing(sensor)
            )
            await advance(3)
            assert mgr.limits.high < 20
            assert sensor.samples
            check_invariants(mgr)


        MANAGERS = []


        async def test_managers_stay_open_during_the_test(connmgr, fake_connections):
            await fake_connections.open(connmgr)
            MANAGERS.append(connmgr)
            assert connmgr.statistics().connections == 1


        def test_and_are_closed_after_it():
            [mgr] = MANAGERS
            assert mgr._state.closed
            check_invariants(mgr)
        """,
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=5)


def test_a_broken_protocol_fails_with_a_readable_message(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        """
        import pytest
        import trio_connmgr as cm
        from trio_connmgr.testing import assert_not_pruned, force_round
        from kad import Kad


        @pytest.mark.connmgr(limits=cm.Limits(low=3, high=6), grace_period=0)
        async def test_scorer_keeps_the_table(connmgr, fake_connections):
            kad = Kad({"a", "b", "c"}, broken=True)
            quota = cm.Quota(0, 6)
            async with connmgr.enroll("/kad", quota=quota, scorer=kad.score) as kad.enrollment:
                members = [await fake_connections.open(connmgr, p) for p in "abc"]
                for conn in members + await fake_connections.open_many(connmgr, 3):
                    kad.join(conn)
                await force_round(connmgr)
                assert_not_pruned(members)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: 3 of 3 connections were pruned, expected none:",
            # Equal tallies: the newest goes first.
            "*#1 peer='a' inbound: pruned by phase tally #3, tally 0.100, trigger trim",
            "*#2 peer='b' inbound: pruned by phase tally #2, tally 0.100, trigger trim",
            "*#3 peer='c' inbound: pruned by phase tally #1, tally 0.100, trigger trim",
        ]
    )


def test_a_broken_manager_option_fails_the_test_not_the_session(
    pytester: pytest.Pytester,
) -> None:
    write_suite(
        pytester,
        """
        import pytest
        import trio_connmgr as cm


        @pytest.mark.connmgr(limits=cm.Limits(low=2, high=4), grace_period=-1)
        async def test_bad(connmgr):
            pass


        @pytest.mark.connmgr(cm.Limits(low=2, high=4))
        async def test_positional(connmgr):
            pass


        async def test_good(connmgr):
            assert connmgr.limits == cm.Limits(low=4, high=8)
        """,
    )
    result = pytester.runpytest()
    # pytest-trio sets fixtures up inside the test's call: a failing fixture fails the test.
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: grace_period must be a finite, non-negative number of seconds*",
            "*the connmgr marker takes keyword arguments only*",
        ]
    )


def test_fake_sensors_skips_when_there_are_no_fakes(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import importlib

        import pytest


        @pytest.fixture(autouse=True)
        def no_fakes(monkeypatch):
            # import_module, not attribute access: pytester may have dropped the
            # module an earlier in-process run imported.
            kit = importlib.import_module("trio_connmgr.testing._sensor_kit")
            monkeypatch.setattr(kit, "find_fake_sensors", lambda: None)
        """
    )
    pytester.makepyfile(
        """
        def test_needs_sensors(fake_sensors):
            raise AssertionError("not reached")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*the fake_sensors fixture needs trio_connmgr*"])


def test_scripted_fake_sensors(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        """
        import trio_connmgr as cm
        from trio_connmgr.testing import advance


        async def test_script(connmgr_factory, fake_sensors, autojump_clock):
            healthy = fake_sensors.reading({"load": 0.1})
            tight = fake_sensors.reading({"load": 0.9}, ceiling=12)
            sensor = fake_sensors.sensor(script=[healthy, tight])
            assert sensor.name == "fake-1"
            mgr = await connmgr_factory(
                limits=cm.Limits(low=10, high=20),
                sensing=fake_sensors.sensing(sensor, interval=1),
            )
            await advance(3)
            assert mgr.limits.high == 12
            assert mgr.statistics().sensors["fake-1"]["load"] == 0.9
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_peer_ids_and_fake_connections_share_one_counter(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        """
        import pytest
        import trio_connmgr as cm
        from trio_connmgr.testing import force_round


        @pytest.mark.connmgr(limits=cm.Limits(low=1, high=8), grace_period=0)
        async def test_ids(connmgr, fake_connections, peer_ids):
            a = await fake_connections.open(connmgr)
            b = await fake_connections.open(connmgr, peer_ids())
            c = await fake_connections.open(connmgr, fake_connections.peer())
            assert [a.peer, b.peer, c.peer] == ["peer-1", "peer-2", "peer-3"]
            connmgr.protect(b.peer, "keep")
            result = await force_round(connmgr)
            assert set(result.pruned) == {a, c}
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_stateful_marker_option_serves_one_test(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        """
        import pytest
        import trio_connmgr as cm
        from trio_connmgr.testing import FakeSensors

        kit = FakeSensors()
        pytestmark = pytest.mark.connmgr(
            limits=cm.Limits(low=10, high=20), sensing=kit.sensing(kit.sensor())
        )


        @pytest.mark.parametrize("run", [1, 2])
        async def test_twice(connmgr, run):
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*the connmgr marker's sensing=* was already used by an earlier test's manager*"]
    )


def test_the_fixtures_close_under_a_manual_clock(pytester: pytest.Pytester) -> None:
    """Closing awaits close() callbacks that sleep: nothing else moves a manual clock."""
    write_suite(
        pytester,
        """
        import pytest
        import trio_connmgr as cm
        from trio_connmgr.testing import force_round


        @pytest.mark.timeout(10)
        @pytest.mark.connmgr(limits=cm.Limits(low=1, high=4), grace_period=0)
        async def test_slow_closes(connmgr, fake_connections, mock_clock):
            for _ in range(3):
                fake_connections.track(connmgr, close_delay=0.5)
            result = await force_round(connmgr)
            assert len(result.pruned) == 2
            assert fake_connections.close_calls(result.pruned[0]) == 1
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_importing_the_plugin_is_light() -> None:
    """pytest imports every installed plugin at start-up: the toolkit loads on first use."""
    code = textwrap.dedent(
        """
        import sys
        import trio_connmgr.testing._plugin
        heavy = [m for m in ("hypothesis", "trio_connmgr.testing._time",
                 "trio_connmgr.testing.workload", "trio_connmgr.testing._invariants",
                 "trio_connmgr.testing.strategies") if m in sys.modules]
        assert not heavy, heavy
        import trio_connmgr.testing as t
        t.check_invariants
        assert "trio_connmgr.testing._invariants" in sys.modules
        assert "hypothesis" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
