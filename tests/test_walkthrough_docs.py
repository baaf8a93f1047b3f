"""What the documentation promises a protocol author, checked against the library.

Covers the snippets and claims of README.md and docs/ that tests/test_docs.py
and tests/test_readme.py do not run: fragments that need a context to run in,
the wording of the assertion messages shown on "Testing your protocol", and
how ``check_invariants`` treats its ``last_round`` argument.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import trio
import trio.testing
from test_docs import python_block

import trio_connmgr as cm
from trio_connmgr.testing import (
    advance,
    assert_not_pruned,
    check_invariants,
    force_round,
    open_fake_connections,
    record_rounds,
)

pytest_plugins = ["pytester"]


# check_invariants(last_round=...): a round that did not happen is not a pass.


async def test_check_invariants_fails_when_the_recorded_round_never_ran(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        open_fake_connections() as fakes,
        record_rounds(mgr) as rounds,
    ):
        await fakes.open_many(mgr, 3)  # at or below high: no round runs
        await advance(31)
        assert rounds.last is None
        with pytest.raises(AssertionError, match="no round has completed"):
            check_invariants(mgr, last_round=rounds.last)


async def test_check_invariants_without_last_round_checks_the_manager_alone(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        open_fake_connections() as fakes,
    ):
        await fakes.open_many(mgr, 3)
        check_invariants(mgr)
        check_invariants(mgr, allow_round_failures=True)
        # A round that did run is judged as before.
        check_invariants(mgr, last_round=await force_round(mgr))


async def test_check_invariants_reports_a_missing_round_with_the_other_violations(
    autojump_clock: object,
) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        mgr._state.rounds.failures += 1
        try:
            with pytest.raises(AssertionError) as info:
                check_invariants(mgr, last_round=None)
        finally:
            mgr._state.rounds.failures -= 1
    message = str(info.value)
    assert message.startswith("trio_connmgr invariants violated (2):")
    assert "1 regulation round(s) raised" in message
    assert "last_round is None: no round has completed" in message


@pytest.mark.parametrize("wrong", ["recorder", "rounds", "text"])
async def test_check_invariants_refuses_a_last_round_of_another_type(
    wrong: str, autojump_clock: object
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        record_rounds(mgr) as recorder,
    ):
        await force_round(mgr)
        value: Any = {"recorder": recorder, "rounds": recorder.rounds, "text": "last"}[wrong]
        with pytest.raises(cm.ConfigError, match=r"check_invariants last_round must be .* got"):
            check_invariants(mgr, last_round=value)


# docs/testing.md: the fragments, in the context they take for granted.


async def test_the_fake_connections_fragment_runs_as_shown(autojump_clock: object) -> None:
    block = python_block("testing.md", "fake_connections.close_calls(tracked)")
    namespace: dict[str, Any] = {}
    exec(
        "async def fragment(mgr, fake_connections):\n"
        + textwrap.indent(block + "return locals()\n", "    "),
        namespace,
    )
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=20, high=30)) as mgr,
        open_fake_connections() as fake_connections,
    ):
        made = await namespace["fragment"](mgr, fake_connections)
        # As the comments say: inbound, peer "peer-1"; the named peer outbound.
        assert (made["conn"].peer, made["conn"].direction.value) == ("peer-1", "inbound")
        assert (made["boot"].peer, made["boot"].direction.value) == ("boot", "outbound")
        assert len(made["conns"]) == 10
        assert mgr.statistics().connections == 12  # the first one closed


async def test_the_record_rounds_fragment_runs_as_shown(autojump_clock: object) -> None:
    block = python_block("testing.md", "rounds.last.completed.trigger")
    namespace: dict[str, Any] = {"record_rounds": record_rounds, "advance": advance}
    exec(
        "async def fragment(mgr, conns):\n" + textwrap.indent(block, "    "),
        namespace,
    )
    # Seven idle connections, high=6: at the end of the grace period (30 s by
    # default) a round takes the three oldest down to low=4.
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=6)) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 7)
        await namespace["fragment"](mgr, conns)


async def test_the_assertion_message_reads_as_shown(autojump_clock: object) -> None:
    """The ``2 of 3 connections were pruned, expected none`` example, for real."""
    shown = textwrap.dedent("""\
        AssertionError: 2 of 3 connections were pruned, expected none:
          #1 peer='a' inbound: pruned by phase tally #2, tally 0.100, trigger trim
          #2 peer='b' inbound: pruned by phase tally #1, tally 0.100, trigger trim
    """)
    scores = {"a": 0.1, "b": 0.1, "c": 0.9}
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=3), grace_period=0) as mgr,
        open_fake_connections() as fakes,
        mgr.enroll(
            "/p", quota=cm.Quota(0, 3), scorer=lambda s: scores[s.connection.peer]
        ) as member,
    ):
        conns = [await fakes.open(mgr, peer) for peer in "abc"]
        for conn in conns:
            member.track_stream(conn)
        await force_round(mgr)
        with pytest.raises(AssertionError) as info:
            assert_not_pruned(conns)
    assert f"AssertionError: {info.value}\n" == shown


# Migration: go-libp2p's Unprotect returns whether another tag still protects.


async def test_unprotect_says_whether_another_tag_still_protects_the_peer() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        mgr.protect("relay-peer", "relay")
        mgr.protect("relay-peer", "kad")
        assert mgr.unprotect("relay-peer", "relay") is True
        assert mgr.unprotect("relay-peer", "kad") is False
        assert mgr.unprotect("relay-peer", "kad") is False


# docs/testing.md: "the closest marker wins: a test's replaces its class's or module's".


def test_the_closest_connmgr_marker_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(
        test_markers="""
        import pytest
        import trio_connmgr as cm

        pytestmark = pytest.mark.connmgr(limits=cm.Limits(low=3, high=5))


        async def test_module(connmgr):
            assert connmgr.limits == cm.Limits(low=3, high=5)


        class TestClass:
            pytestmark = pytest.mark.connmgr(limits=cm.Limits(low=6, high=9))

            async def test_class(self, connmgr):
                assert connmgr.limits == cm.Limits(low=6, high=9)

            @pytest.mark.connmgr(grace_period=5)
            async def test_own(self, connmgr):
                # Replaced, not merged: the default limits come back.
                assert connmgr.limits == cm.Limits(low=4, high=8)
        """
    )
    pytester.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=3)


# docs/sensing-and-admission.md: the controller samples once before the body runs.


async def test_sensing_samples_before_the_body_runs_and_a_ceiling_cuts_at_once(
    autojump_clock: object,
) -> None:
    fake = cm.sensing.FakeSensor()
    sensing = cm.Sensing([fake], interval=5.0)
    async with cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=sensing) as mgr:
        assert fake.samples == [0.0]
        fake.ceiling = 30  # healthy, but a ceiling below the share cuts it
        await trio.sleep(5.5)
        assert mgr.limits == cm.Limits(low=12, high=30)
        assert mgr.statistics().limits_source == "sensing ceiling (fake)"
