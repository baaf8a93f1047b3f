"""Eclipse resistance: an attacker in one subnet cannot take the honest peers' places."""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm

from .conftest import Figures, scale

ATTEMPTS = scale(2_000, 20_000)


async def test_attacker_subnet_cannot_evict_the_valuable(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    limits = cm.Limits(low=20, high=30, hard=40)
    admission = cm.Admission(ipv4_caps={24: 4, 16: 10}, rate=2.0, burst=4)
    attacker_admitted = 0
    attacker_peak = 0
    below_min: list[str] = []

    async with (
        cm.open_connection_manager(
            limits=limits,
            admission=admission,
            grace_period=1.0,
            silence_period=0.5,
            max_lock_ttl=1e6,  # the honest mesh holds its locks for the whole attack
        ) as mgr,
        mgr.enroll("/mesh", quota=cm.Quota(0, 20)) as mesh,
        mgr.enroll("/essential", quota=cm.Quota(6, 12)) as essential,
        mgr.enroll("/kad", quota=cm.Quota(2, 40), scorer=lambda s: 1.0) as kad,
        trio.open_nursery() as nursery,
    ):
        valuable: list[cm.Connection] = []

        async def honest(
            i: int, role: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            peer = f"honest-{i}"
            if role == "protected":
                mgr.protect(peer, "honest")
            address = f"198.{51 + i}.0.7"  # one honest peer per /16
            async with mgr.connection(peer, direction="inbound", address=address) as conn:
                if role == "locked":
                    async with mesh.stream(conn) as stream, mesh.lock(stream, ttl=1e6):
                        valuable.append(conn)
                        task_status.started()
                        await trio.sleep_forever()
                elif role == "essential":
                    async with essential.stream(conn):
                        valuable.append(conn)
                        task_status.started()
                        await trio.sleep_forever()
                else:
                    if role == "protected":
                        valuable.append(conn)
                    async with kad.stream(conn):
                        task_status.started()
                        await trio.sleep_forever()

        roles = ["locked"] * 5 + ["essential"] * 6 + ["protected"] * 4 + ["plain"] * 10
        for i, role in enumerate(roles):
            await nursery.start(honest, i, role)
        await trio.sleep(2)  # grace ends for the honest peers

        async def attacker(i: int) -> None:
            nonlocal attacker_admitted, attacker_peak
            # Many hosts of 203.0.113.0/24 and its /16, scoring as high as possible.
            address = f"203.0.{113 + i % 3}.{i % 250 + 1}"
            try:
                async with mgr.connection(f"sybil-{i}", direction="inbound", address=address) as c:
                    attacker_admitted += 1
                    attackers = sum(1 for x in mgr.connections if str(x.peer).startswith("sybil"))
                    attacker_peak = max(attacker_peak, attackers)
                    async with kad.stream(c) as stream:
                        stream.touch(nbytes=1 << 20)
                        await trio.sleep(30)
            except cm.ConnectionRefused:
                pass

        for i in range(ATTEMPTS):
            nursery.start_soon(attacker, i)
            await trio.sleep(0.05)
            for name, p in mgr.statistics().protocols.items():
                if p.usage < p.grant_min and name != "/kad":
                    below_min.append(f"{name} at {p.usage} < {p.grant_min}")

        stats = mgr.statistics()
        lost = [c for c in valuable if c.closed]
        figures["attacker attempts"] = ATTEMPTS
        figures["attacker admitted / peak at once"] = f"{attacker_admitted} / {attacker_peak}"
        figures["refusals by reason"] = dict(stats.refusals)
        figures["pruned by phase"] = dict(stats.rounds.victims_by_phase)
        figures["lost valuable connections"] = len(lost)
        figures["protocols pushed below grant.min"] = len(below_min)

        assert lost == []
        assert below_min == []
        assert attacker_peak <= 10  # the /16 cap
        assert stats.refusals.get("subnet", 0) > 0
        assert stats.refusals.get("rate", 0) > 0
        assert stats.connections_pruned > 0  # the attack forced rounds
        assert essential.usage == 6
        assert mesh.locks_held == 5
        nursery.cancel_scope.cancel()
