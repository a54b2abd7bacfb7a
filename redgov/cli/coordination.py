"""Coordination commands: ``lease acquire|renew|release`` and ``wait``, and the lease that fences a
write given ``--lease-owner O --lease-token N`` (transition, configure, rollback).

A lease refused (held by another owner, expired, taken over) is a LeaseError: exit 1. ``wait``
timing out is a ``WaitTimeoutError``: exit 1, as a refusal (see ``exits``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..records import Lease
from .context import Context
from .exits import WaitTimeoutError
from .output import state_line, when
from .parser import UsageError

__all__ = ["COMMANDS", "fence"]

#: the expiry of a lease built from --lease-owner/--lease-token (never read, see ``fence``)
_EPOCH = datetime.fromtimestamp(0, UTC)


def fence(ctx: Context) -> Lease | None:
    """The Lease a write is fenced by: from ``--lease-owner`` and ``--lease-token`` (both or neither;
    one alone is a UsageError), None without them."""
    owner, token = ctx.args.lease_owner, ctx.args.lease_token
    if owner is None and token is None:
        return None
    if owner is None or token is None:
        given, missing = ("--lease-owner", "--lease-token") if token is None else ("--lease-token", "--lease-owner")
        raise UsageError(f"{given} needs {missing}: give both (from `redgov lease acquire`) or neither")
    # Only the experiment, the scope and the token matter for fencing: the server checks inside the
    # write's script that this token is the experiment's current, unexpired lease (by its own clock).
    # The expiry field is not checked, so the epoch stands in for it.
    return _lease(ctx, owner, token)


def _lease(ctx: Context, owner: str, token: int) -> Lease:
    return Lease(experiment=ctx.args.experiment, owner=owner, token=token, expires_at=_EPOCH, **ctx.scope)


def _held(lease: Lease) -> dict[str, Any]:
    """A lease for --json, without the expiry (a lease built from arguments has none worth showing)."""
    return {"experiment": lease.experiment, "owner": lease.owner, "token": lease.token, "tenant": lease.tenant,
            "environment": lease.environment}


def cmd_lease(ctx: Context) -> int:
    a = ctx.args
    out = ctx.out
    if a.lease_command == "show":
        with ctx.governance() as gov:
            current = gov.current_lease(a.experiment, **ctx.scope)
        text = (f"{a.experiment}: nobody holds the lease" if current is None else
                f"{a.experiment}: lease held by {current.owner}, token {current.token}, "
                f"expires {when(current.expires_at)}")
        ctx.out.emit({"experiment": a.experiment, "lease": current}, text)
        return 0
    with ctx.governance() as gov:
        if a.lease_command == "release":
            lease = _lease(ctx, a.owner, a.token)
            # Governance.release_lease returns None; its plan says whether anything was released
            released = bool(gov.backplane.run(gov.core.release_lease(lease)))
        elif a.lease_command == "renew":
            held = gov.renew_lease(_lease(ctx, a.owner, a.token), ttl=timedelta(seconds=a.ttl))
        else:
            held = gov.acquire_lease(a.experiment, owner=a.owner, ttl=timedelta(seconds=a.ttl), **ctx.scope)
    if a.lease_command == "release":
        if released:
            text = f"{a.experiment}: released the lease of {a.owner} (token {a.token})"
        else:
            text = (f"{a.experiment}: nothing released: the lease of {a.owner} with token {a.token} had expired "
                    "or was taken over")
        out.emit({"experiment": a.experiment, "released": released, "lease": _held(lease)}, text)
        return 0
    verb = "renewed" if a.lease_command == "renew" else "held"
    out.emit({"experiment": a.experiment, "lease": held},
             f"{a.experiment}: lease {verb} by {held.owner}, token {held.token}, expires {when(held.expires_at)}")
    return 0


def cmd_wait(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        try:
            state = gov.wait_for(a.experiment, a.states, timeout=a.timeout, **ctx.scope)
        except TimeoutError as exc:  # the wait's own deadline (redis' socket timeouts are RedisErrors)
            raise WaitTimeoutError(str(exc)) from exc
    ctx.out.emit(state, state_line(state, ctx.out.state))  # the state record, as `state --json` prints it
    return 0


COMMANDS: dict[str, Callable[[Context], int]] = {"lease": cmd_lease, "wait": cmd_wait}
