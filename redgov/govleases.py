"""Sans-IO lease plans of GovernanceCore: acquire, renew and release an experiment's fenced lease.

A lease is one Redis string per experiment, ``<token> <owner>``, written with ``SET ... PXAT``
by ``lease.lua`` (new expiries are the server's ``TIME`` + ttl): it exists exactly while the
lease lasts, Redis judging its expiry by its own clock.
The fencing token is kept in the experiment's state hash (field ``lt``) so it survives the
lease's expiry; ``transition``/``create_version`` given ``lease=`` check, inside their own
script, that the lease's token is the one stored (an expired lease key is gone, so an
expired lease fails the check too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from .calls import Call
from .errors import CorruptDataError, NotFoundError, RedgovError, ValidationError
from .govreads import GovernanceSettings
from .records import Lease
from .validate import check_name

__all__ = ["LeasePlans", "check_lease"]

#: longest lease accepted (a lease is a coordination primitive, not a lock kept for days)
MAX_TTL = timedelta(days=7)


_ONE_MS = timedelta(milliseconds=1)


def _ttl_ms(ttl: object) -> int:
    if not isinstance(ttl, timedelta) or not _ONE_MS <= ttl <= MAX_TTL:
        raise ValidationError(f"ttl must be a timedelta from 1 ms to {MAX_TTL.days} days, got {ttl!r}")
    return ttl // _ONE_MS


def check_lease(lease: object) -> Lease:
    """``lease`` when it is a Lease, else ValidationError naming what was passed."""
    if not isinstance(lease, Lease):
        raise ValidationError(f"lease must be a redgov.Lease (from acquire_lease), got {type(lease).__name__}")
    if isinstance(lease.token, bool) or not isinstance(lease.token, int) or lease.token < 1:
        raise ValidationError(f"lease.token must be a positive integer, got {lease.token!r}")
    return lease


class LeasePlans(GovernanceSettings):
    """The lease half of ``GovernanceCore`` (a mixin)."""

    def _lease_call(self, experiment: str, tenant: str | None, environment: str | None, mode: str, owner: str,
                    token: str, ttl: str, parse: Any, recover: Any = None) -> Call[Any]:
        scope, exp = self.core.keys(experiment, tenant, environment)
        return Call((exp.state, exp.lease()), (mode, owner, token, ttl, experiment), parse, "lease", scope=scope,
                    recover=recover)

    def acquire_lease(self, experiment: str, *, owner: str, ttl: timedelta, tenant: str | None,
                      environment: str | None) -> Call[Lease]:
        """Acquire (or, as its holder, renew) the experiment's lease for ``ttl``."""
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        owner = check_name(owner, "owner")
        ms = _ttl_ms(ttl)
        return self._lease_call(experiment, tenant, environment, "acquire", owner, "", str(ms),
                                _lease_reply(experiment, owner, tenant, environment), _explain_not_found)

    def renew_lease(self, lease: Lease, *, ttl: timedelta) -> Call[Lease]:
        """Extend ``lease`` by ``ttl`` from now (server clock), keeping its token."""
        lease = check_lease(lease)
        experiment, tenant, environment = self._names(lease.experiment, lease.tenant, lease.environment)
        ms = _ttl_ms(ttl)
        return self._lease_call(experiment, tenant, environment, "renew", lease.owner, str(lease.token), str(ms),
                                _lease_reply(experiment, lease.owner, tenant, environment))

    def current_lease(self, experiment: str, *, tenant: str | None, environment: str | None) -> Call[Lease | None]:
        """The experiment's live lease (None: nobody holds one), read by the lease script (no write)."""
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        return self._lease_call(experiment, tenant, environment, "read", "", "", "",
                                _current_reply(experiment, tenant, environment))

    def release_lease(self, lease: Lease) -> Call[bool]:
        """End ``lease`` now if it is still the current one (True), else do nothing (False)."""
        lease = check_lease(lease)
        experiment, tenant, environment = self._names(lease.experiment, lease.tenant, lease.environment)
        return self._lease_call(experiment, tenant, environment, "release", lease.owner, str(lease.token), "",
                                lambda reply: bool(int(reply[0])))


#: said when a lease is asked for a name that is no experiment (e.g. ``job:nightly-etl``)
LEASE_NEEDS_EXPERIMENT = ("; leases belong to a created experiment (they fence its writes; Governance.create or "
                          "`redgov create` makes one), and named locks for jobs that are not experiments are "
                          "planned, not available yet")


def _explain_not_found(error: RedgovError) -> Any:
    """The acquire's refusal, re-raised; a NotFoundError also says why a lease needs an experiment."""
    if isinstance(error, NotFoundError):
        raise NotFoundError(f"{error}{LEASE_NEEDS_EXPERIMENT}") from error
    raise error


def _current_reply(experiment: str, tenant: str | None, environment: str | None) -> Any:
    def parse(reply: Any) -> Lease | None:
        if not reply:
            return None
        try:
            owner = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        except (IndexError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"lease of {experiment}: unexpected reply {reply!r} ({exc!r})") from None
        lease: Lease = _lease_reply(experiment, owner, tenant, environment)(reply)
        return lease

    return parse


def _lease_reply(experiment: str, owner: str, tenant: str | None, environment: str | None) -> Any:
    def parse(reply: Any) -> Lease:
        try:
            token, until_ms = int(reply[0]), int(reply[1])
        except (IndexError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"lease of {experiment}: unexpected reply {reply!r} ({exc!r})") from None
        return Lease(experiment=experiment, owner=owner, token=token,
                     expires_at=datetime.fromtimestamp(until_ms / 1000, UTC), tenant=tenant, environment=environment)

    return parse

