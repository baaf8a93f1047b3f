"""Quota allocation: resolve requests against the global share and counter-propose.

SPEC §3: relative quotas resolve against ``G``; mins are reserved and must fit
in ``G``; if they do not, mins are scaled down proportionally with
largest-remainder rounding. A ``strict`` enrollment's min is reserved first, so
that it keeps the min it was admitted with when others come later: only the
other mins are scaled into what the strict ones leave, unless the strict mins
alone exceed ``G`` (it shrank), in which case they are scaled among themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._config import Grant, Quota


def allocate(share: int, quotas: Sequence[Quota], strict: Sequence[bool] = ()) -> list[Grant]:
    """Return the grants for ``quotas`` (in order) against the global share ``share``.

    ``strict[i]`` says whether request ``i`` is strict (missing: not strict);
    strict mins are reserved before the others are.

    Guarantees (SPEC §12.5): ``sum(g.min) <= share`` and ``g.min <= g.max <= share``.
    Pure and deterministic: ties in rounding go to the earlier request.
    """
    resolved = [quota.resolve(share) for quota in quotas]
    mins = [lo for lo, _ in resolved]
    if sum(mins) > share:
        firm = [i for i, is_strict in enumerate(strict[: len(mins)]) if is_strict]
        rest = sorted(set(range(len(mins))).difference(firm))
        firm_total = sum(mins[i] for i in firm)
        if firm_total > share:
            # The strict mins alone do not fit (G shrank): they share G.
            _scale_into(mins, firm, share)
            _scale_into(mins, rest, 0)
        else:
            _scale_into(mins, rest, share - firm_total)
    return [Grant(lo, max(lo, hi)) for lo, (_, hi) in zip(mins, resolved, strict=True)]


def _scale_into(mins: list[int], indices: Sequence[int], share: int) -> None:
    """Scale ``mins[i]`` for ``i`` in ``indices`` down to fit ``share``, in place."""
    part = [mins[i] for i in indices]
    if sum(part) > share:
        for i, lo in zip(indices, scale_down(part, share), strict=True):
            mins[i] = lo


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
