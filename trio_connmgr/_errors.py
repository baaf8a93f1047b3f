"""The exceptions trio_connmgr raises: all of them derive from :class:`ConnMgrError`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar, final

if TYPE_CHECKING:
    from ._config import Grant

_T = TypeVar("_T")


def call_each(action: Callable[[_T], object], items: Iterable[_T]) -> None:
    """``action(item)`` for every item, even if one raises (user callbacks may
    raise anything, a ``KeyboardInterrupt`` too); then the first error is raised."""
    error: BaseException | None = None
    for item in items:
        try:
            action(item)
        except BaseException as exc:
            if error is None:
                error = exc
    if error is not None:
        raise error


class ConnMgrError(Exception):
    """Base class of every error trio_connmgr raises on purpose."""


@final
class ConfigError(ConnMgrError, ValueError):
    """A setting or argument is invalid.

    The message names the field and the offending value, for example
    ``"Limits.low must be a positive integer, got 0"``. Also a :class:`ValueError`,
    so code that validates input generically keeps working.
    """


class ResourceClosed(ConnMgrError):
    """The connection, stream, enrollment or manager has already closed."""


@final
class ManagerClosed(ResourceClosed):
    """The connection manager is closed (or closing) and takes no new work."""


@final
class ConnectionRefused(ConnMgrError):
    """Admission refused a new connection.

    Attributes:
        reason: Short machine-readable name of the limit that refused it
            (``"hard"``, ``"subnet"``, ``"rate"``, ``"deny"``), as counted in
            :meth:`ConnectionManager.statistics`.
        detail: Human-readable explanation naming the limit and its values.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail if detail is not None else reason
        super().__init__(self.detail)


@final
class QuotaDenied(ConnMgrError):
    """A ``strict`` enrollment could not get the quota it asked for.

    Attributes:
        offer: The :class:`Grant` the enrollment would get without ``strict``.
    """

    def __init__(self, name: str, offer: Grant) -> None:
        self.name = name
        self.offer = offer
        super().__init__(
            f"enrollment {name!r} is strict and its quota cannot be granted; "
            f"the manager offers min={offer.min}, max={offer.max}"
        )

    def __reduce__(self) -> tuple[type[QuotaDenied], tuple[str, Grant]]:
        # The default rebuilds from ``args`` (the message alone): pickling and
        # copy.copy need the constructor's own arguments.
        return type(self), (self.name, self.offer)


@final
class LockDenied(ConnMgrError):
    """The manager refused a lock.

    Attributes:
        reason: ``"closed"`` (stream or connection closed), ``"grant"`` (the
            enrollment already holds locks on ``grant.max`` connections) or
            ``"budget"`` (the manager's lock budget is spent).
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail if detail is not None else reason
        super().__init__(self.detail)
