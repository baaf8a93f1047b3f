"""Quota allocation: resolve requests against the global share and counter-propose.

SPEC §3: relative quotas resolve against ``G``; mins are reserved and must fit
in ``G``; if they do not, every min is scaled down proportionally with
largest-remainder rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._config import Grant, Quota


def allocate(share: int, quotas: Sequence[Quota]) -> list[Grant]:
    """Return the grants for ``quotas`` (in order) against the global share ``share``.

    Guarantees (SPEC §12.5): ``sum(g.min) <= share`` and ``g.min <= g.max <= share``.
    Pure and deterministic: ties in rounding go to the earlier request.
    """
    resolved = [quota.resolve(share) for quota in quotas]
    mins = [lo for lo, _ in resolved]
    total = sum(mins)
    if total > share:
        mins = scale_down(mins, share)
    return [Grant(lo, max(lo, hi)) for lo, (_, hi) in zip(mins, resolved, strict=True)]


def scale_down(mins: Sequence[int], share: int) -> list[int]:
    """Scale ``mins`` proportionally so they sum to exactly ``share`` (largest remainder).

    Only called when ``sum(mins) > share``; each result is ``<=`` its input.
    """
    total = sum(mins)
    floors = [m * share // total for m in mins]
    remainders = [m * share % total for m in mins]
    spare = share - sum(floors)
    # Largest remainders get the spare units; ties go to the earlier request.
    order = sorted(range(len(mins)), key=lambda i: (-remainders[i], i))
    for i in order[:spare]:
        floors[i] += 1
    return floors
