"""Admission decisions: CIDR lists, per-subnet counts and token buckets (SPEC §10).

Plain synchronous code with ``now`` passed in; :class:`trio_connmgr.Admission`
applies the verdicts (refusing through the manager, evicting through the state).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Hashable, Iterable, Mapping
from typing import final

import attrs

from .._config import check_count, check_positive_float
from .._errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
"""IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``)."""
MAX_BURST = 2**53
"""The largest token-bucket size (the largest integer a float holds exactly)."""
SWEEP_EVERY = 1024
"""Token-bucket takes between two sweeps of buckets that have refilled completely
(at least: never fewer than the buckets the last sweep left)."""


def parse_networks(field: str, cidrs: Iterable[str] | str | None) -> tuple[Network, ...]:
    """Parse CIDR strings (``"10.0.0.0/8"``, ``"2001:db8::/32"``, a bare address).

    Host bits must be zero (``"10.0.0.1/8"`` is an error: it is ambiguous). A
    network within the IPv4-mapped range (``"::ffff:203.0.113.0/120"``) becomes
    the IPv4 network it maps (``203.0.113.0/24``), as :func:`parse_host` turns
    mapped addresses into IPv4 ones: otherwise it would match nothing.

    Raises:
        ConfigError: not an iterable of strings, or a string that is not a network.
    """
    if cidrs is None:
        return ()
    if isinstance(cidrs, str):
        # A lone string would otherwise be iterated character by character.
        cidrs = (cidrs,)
    given: object = cidrs  # (bytes are not an Iterable[str], but untyped code passes them)
    try:
        if isinstance(given, bytes | bytearray):
            raise TypeError  # its items are ints
        items = list(cidrs)
    except TypeError:
        raise ConfigError(f"{field} must be an iterable of CIDR strings, got {cidrs!r}") from None
    networks: list[Network] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{field} entries must be CIDR strings, got {item!r}")
        try:
            network = ipaddress.ip_network(item.strip())
        except ValueError as exc:
            raise ConfigError(f"{field} entry {item!r} is not a valid CIDR: {exc}") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            mapped = network.network_address.ipv4_mapped
            assert mapped is not None
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
        networks.append(network)
    return tuple(networks)


def parse_caps(
    field: str, caps: Mapping[int, int] | None, bits: int
) -> tuple[tuple[int, int], ...]:
    """Validate ``{prefix_length: max_connections}``; return it sorted by prefix length.

    Raises:
        ConfigError: not a mapping, a prefix outside ``[0, bits]``, a negative cap.
    """
    if caps is None:
        return ()
    if not isinstance(caps, Mapping):
        raise ConfigError(f"{field} must be a mapping of prefix length to cap, got {caps!r}")
    checked = []
    for prefix, cap in caps.items():
        check_prefix(f"{field} prefix", prefix, bits)
        check_count(f"{field}[{prefix}]", cap, allow_zero=True)
        checked.append((prefix, cap))
    return tuple(sorted(checked))


def check_prefix(field: str, prefix: object, bits: int) -> int:
    """Return ``prefix`` if it is an int in ``[0, bits]``, else raise ConfigError."""
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= bits:
        raise ConfigError(f"{field} must be an integer in [0, {bits}], got {prefix!r}")
    return prefix


def parse_host(address: str | None) -> IPAddress | None:
    """The IP address in a connection's ``address`` string, or ``None``.

    Understands ``"10.1.2.3"``, ``"10.1.2.3:4001"``, ``"::1"``, ``"[::1]:4001"``,
    ``"fe80::1%eth0"`` and multiaddrs (``"/ip4/10.1.2.3/tcp/4001"``,
    ``"/ip6/::1/tcp/4001"``, ``"/ip6zone/eth0/ip6/fe80::1/tcp/4001"``). A
    scoped address is read without its zone. IPv4-mapped IPv6 addresses become
    IPv4. An IPv6 address with a port must be in brackets:
    ``"2001:db8::7:4001"`` is read as the address ``2001:db8::7:4001``.
    """
    if not isinstance(address, str) or not address:
        return None
    text = address.strip()
    if text.startswith("/"):
        parts = text.split("/")
        if len(parts) >= 5 and parts[1] == "ip6zone" and parts[2] and parts[3] == "ip6":
            # The zone scopes the ip6 component after it (a zone names no subnet).
            parts = parts[2:]
        if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
            return None
        text = parts[2]
    elif text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def longest_match(ip: IPAddress, networks: Iterable[Network]) -> int:
    """The longest prefix length among ``networks`` containing ``ip`` (-1 if none)."""
    best = -1
    for network in networks:
        if network.version == ip.version and ip in network and network.prefixlen > best:
            best = network.prefixlen
    return best


def subnet_of(ip: IPAddress, prefix: int) -> Network:
    """The network of length ``prefix`` that contains ``ip``."""
    return ipaddress.ip_network((ip, prefix), strict=False)


@final
@attrs.define
class TokenBucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``burst``.

    Starts full. :meth:`take` spends one token if there is one.
    """

    rate: float
    burst: int
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last call.

        A clock that went back (a bucket outliving its Trio run: each run has a
        clock of its own) earns nothing and counts again from ``now``, rather
        than earning nothing until it is back where it was.
        """
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if available; return whether it was.

        A token is available from :meth:`next_token_at` on, that instant
        included. That is decided by comparing the times: the tokens refilled
        up to that instant may fall short of one by a rounding error, which
        would refuse an attempt made exactly at the rate. (No token is earned
        without time passing, even when ``1 / rate`` is below the clock's
        resolution.)
        """
        stamp, due = self.stamp, self.next_token_at()
        self.refill(now)
        if self.tokens >= 1.0 or (stamp < now and due <= now):
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def full_at(self) -> float:
        """The time at which the bucket will be full again."""
        return self.stamp + (self.burst - self.tokens) / self.rate

    def next_token_at(self) -> float:
        """The time at which one token will be available."""
        if self.tokens >= 1.0:
            return self.stamp
        return self.stamp + (1.0 - self.tokens) / self.rate


@final
class RateLimiter:
    """One :class:`TokenBucket` per subnet, created on first use, forgotten when full.

    Args:
        rate: Tokens (connection attempts) per second per subnet.
        burst: Bucket size: attempts allowed back to back.
        ipv4_prefix: Prefix length grouping IPv4 addresses into subnets.
        ipv6_prefix: Prefix length grouping IPv6 addresses into subnets.
    """

    def __init__(self, rate: float, burst: int, ipv4_prefix: int, ipv6_prefix: int) -> None:
        self.rate = check_positive_float("Admission.rate", rate)
        self.burst = check_count("Admission.burst", burst)
        if burst > MAX_BURST:
            # Tokens are counted in floats: beyond this they no longer count one by one.
            raise ConfigError(f"Admission.burst must be at most 2**53, got {burst!r}")
        self.ipv4_prefix = check_prefix("Admission.rate_ipv4_prefix", ipv4_prefix, 32)
        self.ipv6_prefix = check_prefix("Admission.rate_ipv6_prefix", ipv6_prefix, 128)
        self.buckets: dict[Network, TokenBucket] = {}
        self._takes = 0
        self._sweep_at = SWEEP_EVERY

    def subnet(self, ip: IPAddress) -> Network:
        """The subnet whose bucket ``ip`` draws from."""
        return subnet_of(ip, self.ipv4_prefix if ip.version == 4 else self.ipv6_prefix)

    def take(self, ip: IPAddress, now: float) -> tuple[bool, Network, TokenBucket]:
        """Spend a token of ``ip``'s subnet: (admitted, subnet, its bucket)."""
        self._takes += 1
        if self._takes >= self._sweep_at:
            self.sweep(now)
        key = self.subnet(ip)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, float(self.burst), now)
        return bucket.take(now), key, bucket

    def sweep(self, now: float) -> int:
        """Forget buckets that are full by now (a new one would be identical), and
        those stamped after ``now`` (by the clock of an earlier Trio run)."""
        self._takes = 0
        stale = [
            key
            for key, bucket in self.buckets.items()
            if bucket.full_at() <= now or bucket.stamp > now
        ]
        for key in stale:
            del self.buckets[key]
        # A sweep looks at every bucket: the next one waits for as many takes as
        # buckets are left, so a take costs O(1) however many subnets are live
        # (and until then the buckets grow to twice those left, or SWEEP_EVERY more).
        self._sweep_at = max(SWEEP_EVERY, len(self.buckets))
        return len(stale)


@final
class SubnetCounts:
    """Inbound connections per subnet, at every configured prefix length.

    Connections are keyed by any hashable handle (the manager uses the
    :class:`Connection` itself), so releasing is exact and idempotent.

    Args:
        ipv4_caps: ``((prefix_length, cap), ...)`` for IPv4 addresses.
        ipv6_caps: The same for IPv6.
    """

    def __init__(
        self, ipv4_caps: tuple[tuple[int, int], ...], ipv6_caps: tuple[tuple[int, int], ...]
    ) -> None:
        self.ipv4_caps = ipv4_caps
        self.ipv6_caps = ipv6_caps
        self.has_caps = bool(ipv4_caps or ipv6_caps)
        self.counts: dict[Network, int] = {}
        self._held: dict[Hashable, tuple[Network, ...]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def subnets(self, ip: IPAddress) -> tuple[tuple[Network, int], ...]:
        """``ip``'s subnet at each configured prefix, with that prefix's cap."""
        caps = self.ipv4_caps if ip.version == 4 else self.ipv6_caps
        return tuple((subnet_of(ip, prefix), cap) for prefix, cap in caps)

    def over(self, ip: IPAddress) -> tuple[Network, int, int] | None:
        """The first subnet of ``ip`` already at its cap: (subnet, count, cap), or None."""
        for subnet, cap in self.subnets(ip):
            count = self.counts.get(subnet, 0)
            if count >= cap:
                return subnet, count, cap
        return None

    def add(self, handle: Hashable, ip: IPAddress) -> None:
        """Count ``handle`` in every subnet of ``ip`` (once: adding twice is a no-op)."""
        if handle in self._held:
            return
        keys = tuple(subnet for subnet, _ in self.subnets(ip))
        if not keys:
            return
        self._held[handle] = keys
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1

    def remove(self, handle: Hashable) -> bool:
        """Stop counting ``handle``; return whether it was counted."""
        keys = self._held.pop(handle, None)
        if keys is None:
            return False
        for key in keys:
            n = self.counts[key] - 1
            if n:
                self.counts[key] = n
            else:
                del self.counts[key]
        return True


@final
@attrs.frozen
class Verdict:
    """What the policy says about one inbound newcomer.

    Attributes:
        refuse: ``None`` to admit, else the refusal's reason (``"deny"``,
            ``"rate"``, ``"subnet"``).
        detail: Human-readable explanation naming the limit and its values.
        ip: The parsed address, if any.
        trusted: Allow-listed: exempt from subnet caps and rate limits, and may
            evict at the ``hard`` cap.
        exempt: Exempt from subnet caps and rate limits (trusted or loopback).
    """

    refuse: str | None
    detail: str
    ip: IPAddress | None
    trusted: bool
    exempt: bool


@final
class AdmissionPolicy:
    """The address-based half of admission: lists, subnet caps, rate limits.

    The ``hard`` cap depends on the manager's count and is applied by the caller.

    Args:
        allow: Trusted networks.
        deny: Refused networks. Between ``allow`` and ``deny`` the longest
            matching prefix wins; on a tie, ``deny`` wins.
        ipv4_caps: Per-subnet inbound caps for IPv4, ``((prefix, cap), ...)``.
        ipv6_caps: The same for IPv6.
        rate: A :class:`RateLimiter`, or ``None`` for no rate limit.
        exempt_loopback: Loopback addresses skip subnet caps and rate limits.
    """

    def __init__(
        self,
        *,
        allow: tuple[Network, ...],
        deny: tuple[Network, ...],
        ipv4_caps: tuple[tuple[int, int], ...],
        ipv6_caps: tuple[tuple[int, int], ...],
        rate: RateLimiter | None,
        exempt_loopback: bool,
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.subnets = SubnetCounts(ipv4_caps, ipv6_caps)
        self.rate = rate
        self.exempt_loopback = exempt_loopback
        # With no rule at all, addresses need not even be parsed.
        self._rules = bool(allow or deny or ipv4_caps or ipv6_caps or rate is not None)

    def check(self, address: str | None, now: float) -> Verdict:
        """Decide on an inbound newcomer from ``address``; spends a rate token if limited.

        Order: deny-list, rate limit, subnet caps. An address that is not an IP
        (or ``None``) matches no list and no subnet: only the ``hard`` cap applies.
        """
        ip = parse_host(address) if self._rules else None
        if ip is None:
            return Verdict(None, "", None, False, False)
        allowed = longest_match(ip, self.allow)
        denied = longest_match(ip, self.deny)
        if denied >= 0 and denied >= allowed:
            network = ipaddress.ip_network((ip, denied), strict=False)
            return Verdict(
                "deny",
                f"inbound connection from {ip} refused: deny-list entry {network}",
                ip,
                False,
                False,
            )
        trusted = allowed >= 0
        exempt = trusted or (self.exempt_loopback and ip.is_loopback)
        if not exempt and self.rate is not None:
            ok, subnet, bucket = self.rate.take(ip, now)
            if not ok:
                wait = max(0.0, bucket.next_token_at() - now)
                # (A rate so low that a token takes longer than any float: never.)
                due = f"in {wait:.3g}s" if math.isfinite(wait) else "never at this rate"
                return Verdict(
                    "rate",
                    f"inbound connection from {ip} refused: subnet {subnet} is over its rate "
                    f"limit of {self.rate.rate:g}/s (burst {self.rate.burst}); next "
                    f"admission {due}",
                    ip,
                    trusted,
                    exempt,
                )
        if not exempt:
            over = self.subnets.over(ip)
            if over is not None:
                subnet, count, cap = over
                return Verdict(
                    "subnet",
                    f"inbound connection from {ip} refused: subnet {subnet} has {count} "
                    f"inbound connections, its cap is {cap}",
                    ip,
                    trusted,
                    exempt,
                )
        return Verdict(None, "", ip, trusted, exempt)

    def exempt(self, ip: IPAddress) -> bool:
        """Whether ``ip`` skips subnet caps and rate limits (allow-listed, or loopback
        while ``exempt_loopback``). A deny-listed address is never exempt."""
        allowed = longest_match(ip, self.allow)
        if allowed >= 0:
            return allowed > longest_match(ip, self.deny)
        return self.exempt_loopback and ip.is_loopback

    def admitted(self, handle: Hashable, ip: IPAddress | None) -> None:
        """Count an admitted newcomer from ``ip`` in its subnets (exempt ones are not)."""
        if ip is not None and self.subnets.has_caps and not self.exempt(ip):
            self.subnets.add(handle, ip)

    def released(self, handle: Hashable) -> bool:
        """Stop counting a connection; return whether it was counted."""
        return self.subnets.remove(handle)
