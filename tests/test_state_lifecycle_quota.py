"""A relative quota's min reserves ceil(min * G) connections (SPEC §3): at
least one for any share above zero, however small against G."""

from __future__ import annotations

import pytest

import trio_connmgr as cm


@pytest.mark.parametrize("fraction", [1e-11, 4e-10, 1e-9])
@pytest.mark.parametrize("share", [1, 10, 49])
def test_a_tiny_share_still_reserves_one_connection(fraction: float, share: int) -> None:
    quota = cm.Quota.share(fraction, 1)
    assert quota.resolve(share) == (1, share)


def test_a_zero_share_reserves_nothing() -> None:
    assert cm.Quota.share(0, 1).resolve(10) == (0, 10)


async def test_a_strict_tiny_share_is_granted_its_one_connection() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota.share(1e-11, 1), strict=True) as p,
    ):
        assert p.grant == cm.Grant(1, 10)
