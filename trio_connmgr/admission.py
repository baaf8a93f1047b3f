"""Admission control: the proactive half of connection management (SPEC §10).

Regulation prunes connections after the count went above ``high``; admission
refuses *inbound* newcomers before they are counted. Outbound dials are never
refused by count, so a node can always dial out to recover.

Pass an :class:`Admission` to ``open_connection_manager(admission=...)``::

    admission = cm.Admission(
        allow=["192.0.2.0/24"],                 # trusted: no caps, may evict at hard
        deny=["203.0.113.0/24"],                # always refused
        ipv4_caps={32: 4, 24: 16},              # at most 4 per address, 16 per /24
        ipv6_caps={56: 16, 48: 64},
        rate=2.0, burst=10,                     # per /24 (IPv4) or /56 (IPv6) subnet
    )

Checks, in order, for every inbound connection (each refusal raises
:class:`~trio_connmgr.ConnectionRefused` whose ``reason`` is the name in
parentheses, counted in ``statistics().refusals``):

1. deny-list (``"deny"``): between ``allow`` and ``deny`` the longest matching
   prefix wins, ``deny`` on a tie. Applies to loopback too;
2. rate limit (``"rate"``): a token bucket per subnet, spent by every
   attempt that gets this far (the limit is on attempts);
3. per-subnet caps (``"subnet"``): inbound connections counted per subnet at
   every configured prefix length;
4. the ``hard`` cap (``"hard"``): the manager's count is at ``Limits.hard``.
   An allow-listed newcomer, or one whose peer is protected
   (``mgr.protect``), evicts the lowest-ranked prunable connection instead
   (the round planner's first victim) when ``evict=True``.

Allow-listed addresses, and loopback addresses while ``exempt_loopback=True``,
skip steps 2 and 3. An address that is not an IP address (or ``None``) matches
no list and no subnet: only the ``hard`` cap applies to it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, final

from ._config import Direction, check_bool, check_count, check_positive_float
from ._core._admission import (
    MAX_BURST,
    AdmissionPolicy,
    Network,
    RateLimiter,
    check_prefix,
    parse_caps,
    parse_host,
    parse_networks,
)
from ._core._planner import plan_now
from ._core._state import EVICTED
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._core._state import Connection
    from ._manager import ConnectionManager

__all__ = ["Admission", "enforce_hard_cap"]


def enforce_hard_cap(
    manager: ConnectionManager, peer: Hashable, address: str | None, *, evict: bool = False
) -> None:
    """Apply the ``hard`` cap to an inbound newcomer (synchronous).

    Below ``hard`` (or with no ``hard``) it does nothing. At the cap (or above
    it: outbound connections are never refused) it either
    evicts one prunable connection, the first victim the round planner would
    choose (``evict=True`` and there is one; its ``close_reason`` is
    ``"evicted"``; none if a scorer released a connection meanwhile), or raises
    :class:`~trio_connmgr.ConnectionRefused` with reason ``"hard"``. The manager
    uses it directly when no :class:`Admission` is configured.

    Choosing the victim plans a round over every connection synchronously,
    scorers included (about 20 ms at 10,000 connections): only
    trusted newcomers evict.

    Raises:
        ConnectionRefused: at the cap, with nothing evicted.
        ConfigError: ``evict`` is not ``True`` or ``False``.
    """
    if evict is not False and evict is not True:  # (two identity tests per newcomer)
        check_bool("enforce_hard_cap evict", evict)  # type: ignore[unreachable]
    state = manager._state
    hard = state.hard
    if hard is None or state.count < hard:
        return
    extra = ""
    if evict:
        now = state.clock()
        if state.expire_locks(now):
            # As a round would first (the lock timer may not have run yet at
            # this instant): a lock whose ttl is up shields nothing.
            manager._wake_if_above_high()
        plan = plan_now(state, now, target=1, trigger="admission")
        if state.count < hard:
            # A scorer released a connection while the victim was chosen: room made.
            return
        if plan.connections:
            state.close_connection(plan.connections[0], EVICTED, plan.reasons[0])
            return
        extra = " and no connection can be evicted"
    raise manager._refuse(
        "hard",
        f"inbound connection refused: count {state.count} is "
        f"{'at' if state.count == hard else 'above'} hard={hard}{extra}",
        peer,
        Direction.INBOUND,
        address,
    )


@final
class Admission:
    """Inbound admission policy: CIDR lists, per-subnet caps and rate limits, ``hard``.

    Synchronous and cheap: the manager calls :meth:`admit` for every inbound
    connection before counting it. One ``Admission`` may serve several managers;
    its subnet counts and token buckets then cover all of them.

    Args:
        allow: CIDRs (``"10.0.0.0/8"``, ``"2001:db8::/32"``, a bare address) of
            trusted peers: exempt from subnet caps and rate limits, and allowed to
            evict at the ``hard`` cap.
        deny: CIDRs always refused (reason ``"deny"``). Between ``allow`` and
            ``deny``, the longest matching prefix wins; ``deny`` wins a tie.
        ipv4_caps: ``{prefix_length: max_inbound}`` for IPv4, e.g. ``{32: 4, 24: 16}``.
        ipv6_caps: The same for IPv6, e.g. ``{56: 16, 48: 64}``.
        rate: Inbound connection attempts per second allowed per subnet (token
            bucket; every attempt that reaches this check spends a token, even one
            a later check refuses); ``None`` for no rate limit.
        burst: Bucket size: attempts allowed back to back per subnet
            (default ``max(1, ceil(rate))``, at most ``2**53``).
        rate_ipv4_prefix: Prefix length of the IPv4 subnets sharing a bucket.
        rate_ipv6_prefix: Prefix length of the IPv6 subnets sharing a bucket.
        exempt_loopback: Loopback addresses skip subnet caps and rate limits (the
            deny-list and the ``hard`` cap still apply).
        evict: Whether an allow-listed or protected newcomer at the ``hard`` cap
            evicts a prunable connection instead of being refused.

    The settings are read-only attributes of the same names (``allow`` and
    ``deny`` as tuples of networks, the caps as read-only mappings), except
    ``evict``, which may be set at any time and applies from the next newcomer.

    Raises:
        ConfigError: a bad CIDR, prefix length, cap, rate or burst (the message
            names the field and the value).
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
        ipv4_caps: Mapping[int, int] | None = None,
        ipv6_caps: Mapping[int, int] | None = None,
        rate: float | None = None,
        burst: int | None = None,
        rate_ipv4_prefix: int = 24,
        rate_ipv6_prefix: int = 56,
        exempt_loopback: bool = True,
        evict: bool = True,
    ) -> None:
        allow_networks = parse_networks("Admission.allow", allow)
        deny_networks = parse_networks("Admission.deny", deny)
        ipv4 = parse_caps("Admission.ipv4_caps", ipv4_caps, 32)
        ipv6 = parse_caps("Admission.ipv6_caps", ipv6_caps, 128)
        # Checked even without a rate: a bad value is a mistake either way.
        check_prefix("Admission.rate_ipv4_prefix", rate_ipv4_prefix, 32)
        check_prefix("Admission.rate_ipv6_prefix", rate_ipv6_prefix, 128)
        limiter = None
        if rate is not None:
            rate = check_positive_float("Admission.rate", rate)
            if burst is None:
                burst = min(MAX_BURST, max(1, math.ceil(rate)))
            limiter = RateLimiter(rate, burst, rate_ipv4_prefix, rate_ipv6_prefix)
        elif burst is not None:
            check_count("Admission.burst", burst)
            raise ConfigError(f"Admission.burst needs a rate, got burst={burst!r} and rate=None")
        check_bool("Admission.exempt_loopback", exempt_loopback)
        self.evict = evict
        # The policy works from its own copies of the settings: they are
        # read-only here (properties below), so that changing one is an error
        # rather than a no-op.
        self._ipv4_caps = MappingProxyType(dict(ipv4))
        self._ipv6_caps = MappingProxyType(dict(ipv6))
        self._policy = AdmissionPolicy(
            allow=allow_networks,
            deny=deny_networks,
            ipv4_caps=ipv4,
            ipv6_caps=ipv6,
            rate=limiter,
            exempt_loopback=exempt_loopback,
        )

    @property
    def allow(self) -> tuple[Network, ...]:
        """The allow-listed networks (read-only)."""
        return self._policy.allow

    @property
    def deny(self) -> tuple[Network, ...]:
        """The deny-listed networks (read-only)."""
        return self._policy.deny

    @property
    def ipv4_caps(self) -> Mapping[int, int]:
        """``{prefix_length: max_inbound}`` for IPv4 (read-only)."""
        return self._ipv4_caps

    @property
    def ipv6_caps(self) -> Mapping[int, int]:
        """``{prefix_length: max_inbound}`` for IPv6 (read-only)."""
        return self._ipv6_caps

    @property
    def rate(self) -> float | None:
        """Attempts per second allowed per subnet, or ``None`` (read-only)."""
        limiter = self._policy.rate
        return None if limiter is None else limiter.rate

    @property
    def burst(self) -> int | None:
        """The token-bucket size, or ``None`` without a rate (read-only)."""
        limiter = self._policy.rate
        return None if limiter is None else limiter.burst

    @property
    def exempt_loopback(self) -> bool:
        """Whether loopback skips subnet caps and rate limits (read-only)."""
        return self._policy.exempt_loopback

    @property
    def evict(self) -> bool:
        """Whether an allow-listed or protected newcomer at ``hard`` evicts (settable)."""
        return self._evict

    @evict.setter
    def evict(self, value: bool) -> None:
        self._evict = check_bool("Admission.evict", value)

    def admit(self, manager: ConnectionManager, peer: Hashable, address: str | None) -> None:
        """Raise :class:`~trio_connmgr.ConnectionRefused` if ``peer`` may not connect
        inbound from ``address`` now. Synchronous.

        May evict one connection (see ``evict``). The manager calls it for every
        inbound connection before counting it, then :meth:`admitted`.
        """
        state = manager._state
        verdict = self._policy.check(address, state.clock())
        if verdict.refuse is not None:
            raise manager._refuse(verdict.refuse, verdict.detail, peer, Direction.INBOUND, address)
        enforce_hard_cap(
            manager,
            peer,
            address,
            evict=self._evict and (verdict.trusted or peer in state.protected),
        )

    def admitted(self, conn: Connection) -> None:
        """Count a connection :meth:`admit` let in, in its subnets. Synchronous."""
        if self._policy.subnets.has_caps:
            self._policy.admitted(conn, parse_host(conn.address))

    def released(self, conn: Connection) -> None:
        """Stop counting a connection that closed (the manager calls it). Synchronous."""
        self._policy.released(conn)

    def subnet_counts(self) -> dict[str, int]:
        """Inbound connections counted now per subnet (only subnets with a cap)."""
        return {str(subnet): n for subnet, n in self._policy.subnets.counts.items()}

    def __repr__(self) -> str:
        return (
            f"<Admission allow={len(self.allow)} deny={len(self.deny)} "
            f"ipv4_caps={dict(self.ipv4_caps)} ipv6_caps={dict(self.ipv6_caps)} "
            f"rate={self.rate} burst={self.burst}>"
        )
