"""Coordination: fenced leases, expiring approvals, auto-approve-after, wait_for (one process; see
test_lease_processes.py for real processes racing and pausing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import redgov
from redgov import (
    ApprovalRequiredError,
    AutomaticGate,
    Backplane,
    Governance,
    Lease,
    LeaseError,
    LifecycleState,
    ManualGate,
    NotFoundError,
    ValidationError,
)
from redgov.aio import AsyncGovernance

from .conftest import delete_prefix

S = LifecycleState
SECOND = timedelta(seconds=1)


class Clock:
    """A Governance clock that stands still until moved."""

    def __init__(self, now: datetime = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make(backplane: Backplane) -> Callable[..., Governance]:
    def build(**kwargs: Any) -> Governance:
        return Governance(backplane, **kwargs)

    return build


@pytest.fixture
def gov(make: Callable[..., Governance]) -> Governance:
    return make()


def lease_value(backplane: Backplane, experiment: str) -> bytes | None:
    value: bytes | None = backplane.client.get(backplane.core.keys(experiment, None, None)[1].lease())
    return value


def same_lease(seen: Lease | None, held: Lease) -> bool:
    """``seen`` is ``held``: its expiry read back as the server's TIME + PTTL, so within a few ms."""
    return (seen is not None and (seen.experiment, seen.owner, seen.token, seen.tenant, seen.environment)
            == (held.experiment, held.owner, held.token, held.tenant, held.environment)
            and abs((seen.expires_at - held.expires_at).total_seconds()) < 0.05)


# -- leases --------------------------------------------------------------------------------------


def test_acquire_renew_release(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    first = gov.acquire_lease("exp", owner="ctl-1", ttl=10 * SECOND)
    assert isinstance(first, Lease) and (first.experiment, first.owner) == ("exp", "ctl-1")
    assert first.expires_at > datetime.now(UTC) + 8 * SECOND  # the server's clock, not far from ours here
    again = gov.acquire_lease("exp", owner="ctl-1", ttl=20 * SECOND)  # the holder acquiring again renews
    assert again.token == first.token and again.expires_at > first.expires_at
    with pytest.raises(LeaseError, match=r"held by ctl-1 with token \d+ until 20\d\d-.*Z; ctl-2 cannot acquire"):
        gov.acquire_lease("exp", owner="ctl-2", ttl=SECOND)
    renewed = gov.renew_lease(first, ttl=30 * SECOND)
    assert renewed.token == first.token and renewed.expires_at > again.expires_at
    gov.release_lease(first)
    assert lease_value(backplane, "exp") is None
    second = gov.acquire_lease("exp", owner="ctl-2", ttl=SECOND)
    assert second.token > first.token
    gov.release_lease(first)  # taken over: releases nothing
    assert lease_value(backplane, "exp") is not None
    with pytest.raises(LeaseError, match="was taken over"):
        gov.renew_lease(first, ttl=SECOND)


#: a lease that must outlive a round trip or two, even on a loaded machine, and still expire soon
SHORT = timedelta(seconds=1)


def outlive(backplane: Backplane, lease: Lease) -> None:
    """Return once the server's clock (Redis TIME, what judges expiry) is past ``lease.expires_at``."""
    deadline = time.monotonic() + 30
    while True:
        seconds, micros = backplane.client.time()
        left = (lease.expires_at - datetime.fromtimestamp(seconds + micros / 1e6, UTC)).total_seconds()
        if left < -0.002:  # a key expires once the server's ms clock is past its PXAT
            return
        assert time.monotonic() < deadline, f"the server's clock did not pass {lease.expires_at}"
        time.sleep(min(max(left + 0.003, 0.001), 0.2))


def test_current_lease_shows_the_holder_and_writes_nothing(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    assert gov.current_lease("exp") is None
    held = gov.acquire_lease("exp", owner="ctl-1", ttl=10 * SECOND)
    state = backplane.client.hgetall(backplane.core.keys("exp", None, None)[1].state)
    assert same_lease(gov.current_lease("exp"), held)
    assert backplane.client.hgetall(backplane.core.keys("exp", None, None)[1].state) == state
    gov.release_lease(held)
    assert gov.current_lease("exp") is None
    short = gov.acquire_lease("exp", owner="ctl-2", ttl=SHORT)
    assert same_lease(gov.current_lease("exp"), short)
    outlive(backplane, short)
    assert gov.current_lease("exp") is None  # expired by the server's clock
    assert gov.current_lease("never-created") is None
    gov.create("scoped", tenant="acme", environment="prod")
    scoped = gov.acquire_lease("scoped", owner="ctl-3", ttl=SECOND, tenant="acme", environment="prod")
    assert same_lease(gov.current_lease("scoped", tenant="acme", environment="prod"), scoped)
    assert gov.current_lease("scoped") is None  # another scope
    with pytest.raises(ValidationError):
        gov.current_lease("")


def test_tokens_grow_across_expiry_and_a_lost_counter(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    tokens = []
    for owner in ("a", "b", "c"):
        lease = gov.acquire_lease("exp", owner=owner, ttl=timedelta(milliseconds=30))  # nothing needs it alive
        tokens.append(lease.token)
        outlive(backplane, lease)  # expires by the server's clock
    with pytest.raises(LeaseError, match="has expired"):
        gov.renew_lease(lease, ttl=SECOND)
    backplane.client.hdel(backplane.core.keys("exp", None, None)[1].state, "lt")  # as after a restore
    tokens.append(gov.acquire_lease("exp", owner="d", ttl=SECOND).token)
    assert tokens == sorted(set(tokens)), tokens  # strictly increasing, even without the stored counter


def test_expiry_is_judged_by_the_server_clock_not_the_governance_clock(make: Callable[..., Governance]) -> None:
    clock = Clock(datetime(2040, 1, 1, tzinfo=UTC))  # a client clock far ahead changes nothing
    gov = make(clock=clock)
    gov.create("exp")
    lease = gov.acquire_lease("exp", owner="a", ttl=10 * SECOND)
    assert lease.expires_at < datetime(2030, 1, 1, tzinfo=UTC)
    clock.now += timedelta(days=365)
    gov.transition("exp", S.PENDING_APPROVAL, lease=lease)


def test_fenced_writes_are_refused_once_the_lease_is_lost(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    old = gov.acquire_lease("exp", owner="paused", ttl=SHORT)  # alive for two fenced writes
    gov.transition("exp", S.PENDING_APPROVAL, lease=old)
    gov.create_version("exp", {"v": 1}, lease=old)
    outlive(backplane, old)
    with pytest.raises(LeaseError, match="has expired and no lease is held; nothing was written"):
        gov.transition("exp", S.APPROVED, lease=old)
    new = gov.acquire_lease("exp", owner="standby", ttl=10 * SECOND)
    before = (len(backplane.transitions("exp")), len(backplane.versions("exp")), gov.state("exp"))
    for stale_write in (lambda: gov.transition("exp", S.DRAFT, lease=old),
                        lambda: gov.create_version("exp", {"v": 2}, lease=old),
                        lambda: gov.rollback("exp", 1, lease=old)):
        with pytest.raises(LeaseError, match=f"was taken over \\(the current token is {new.token}\\)"):
            stale_write()
    assert (len(backplane.transitions("exp")), len(backplane.versions("exp")), gov.state("exp")) == before
    gov.transition("exp", S.DRAFT, lease=new)
    gov.create_version("exp", {"v": 2}, lease=new)
    gov.transition("exp", S.PENDING_APPROVAL)  # writes without lease= are not fenced


def test_lease_input_is_checked_before_anything_is_sent(gov: Governance) -> None:
    gov.create("exp")
    gov.create("other")
    with pytest.raises(NotFoundError, match="ghost does not exist"):
        gov.acquire_lease("ghost", owner="a", ttl=SECOND)
    for bad in (dict(owner="", ttl=SECOND), dict(owner="a", ttl=0), dict(owner="a", ttl=timedelta(0)),
                dict(owner="a", ttl=timedelta(days=8)), dict(owner="a\nb", ttl=SECOND)):
        with pytest.raises(ValidationError):
            gov.acquire_lease("exp", **bad)  # type: ignore[arg-type]
    lease = gov.acquire_lease("exp", owner="a", ttl=SECOND)
    with pytest.raises(ValidationError, match="the lease is for experiment 'exp'"):
        gov.transition("other", S.PENDING_APPROVAL, lease=lease)
    with pytest.raises(ValidationError, match="lease must be a redgov.Lease"):
        gov.transition("exp", S.PENDING_APPROVAL, lease="token")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="lease must be a redgov.Lease"):
        gov.renew_lease({"token": 1}, ttl=SECOND)  # type: ignore[arg-type]


def test_a_corrupt_lease_is_named(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    lease = gov.acquire_lease("exp", owner="a", ttl=SECOND)
    key = backplane.core.keys("exp", None, None)[1].lease()
    backplane.client.set(key, "garbage")
    with pytest.raises(redgov.CorruptDataError, match=key):
        gov.transition("exp", S.PENDING_APPROVAL, lease=lease)
    with pytest.raises(redgov.CorruptDataError, match=key):
        gov.acquire_lease("exp", owner="a", ttl=SECOND)
    with pytest.raises(redgov.CorruptDataError, match=key):
        gov.current_lease("exp")


def test_async_leases(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with AsyncGovernance(redgov.aio.connect(redis_url, prefix=prefix)) as agov:
            await agov.create("exp")
            lease = await agov.acquire_lease("exp", owner="a", ttl=SECOND)
            await agov.transition("exp", S.PENDING_APPROVAL, lease=lease)
            renewed = await agov.renew_lease(lease, ttl=5 * SECOND)
            assert same_lease(await agov.current_lease("exp"), renewed)
            await agov.release_lease(renewed)
            assert await agov.current_lease("exp") is None
            with pytest.raises(LeaseError):
                await agov.create_version("exp", {"a": 1}, lease=renewed)

    try:
        asyncio.run(main())
    finally:
        with redis.Redis.from_url(redis_url) as client:
            delete_prefix(client, prefix)


# -- approvals that expire -------------------------------------------------------------------------


def test_an_approval_not_consumed_in_time_no_longer_satisfies_its_gate(make: Callable[..., Governance],
                                                                          backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    short = gov.approve("exp", S.APPROVED, approver="lead", valid_for=timedelta(milliseconds=50))
    assert short.valid_until is not None
    assert abs((short.valid_until - datetime.now(UTC)).total_seconds()) < 5  # the server's clock
    time.sleep(0.1)
    shown = short.valid_until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with pytest.raises(ApprovalRequiredError, match=f"the approval .* expired at {shown}"):
        gov.transition("exp", S.APPROVED)
    assert gov.state("exp").state is S.PENDING_APPROVAL  # type: ignore[union-attr]
    lasting = gov.approve("exp", S.APPROVED, approver="lead", valid_for=timedelta(minutes=5))
    moved = gov.transition("exp", S.APPROVED)
    [linked] = backplane.approvals_for_transition(moved.transition_id)
    assert linked.approval_id == lasting.approval_id and linked.valid_until == lasting.valid_until
    assert [a.valid_until for a in backplane.approvals("exp")] == [short.valid_until, lasting.valid_until]
    with pytest.raises(ValidationError, match="valid_for"):
        gov.approve("exp", S.RUNNING, approver="lead", valid_for=timedelta(0))


# -- automatic gates that wait ---------------------------------------------------------------------


def test_an_automatic_gate_with_after_waits_in_the_current_state(make: Callable[..., Governance]) -> None:
    clock = Clock()
    gov = make(gates=[AutomaticGate(from_state=S.PENDING_APPROVAL, to_state=S.APPROVED, after=timedelta(minutes=15))],
               clock=clock)
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    clock.now += timedelta(minutes=10)
    gov.create_version("exp", {"a": 1})  # a state write that does not change the state: the wait goes on
    with pytest.raises(ApprovalRequiredError, match="been PendingApproval for 15m; allowed from 2026-03-02T10:15:00"):
        gov.transition("exp", S.APPROVED)
    gov.transition("exp", S.DRAFT)  # other moves are not gated
    gov.transition("exp", S.PENDING_APPROVAL)  # re-entering starts the wait again
    clock.now += timedelta(minutes=14, seconds=59)
    with pytest.raises(ApprovalRequiredError, match="allowed from 2026-03-02T10:25:00"):
        gov.transition("exp", S.APPROVED)
    clock.now += timedelta(seconds=1)
    assert gov.transition("exp", S.APPROVED).to_state is S.APPROVED
    assert gov.verify("exp") == []
    assert repr(AutomaticGate(to_state=S.APPROVED, after=timedelta(minutes=15))) == \
        "AutomaticGate(to_state='Approved', after=datetime.timedelta(seconds=900))"
    with pytest.raises(ValidationError, match="after"):
        AutomaticGate(to_state=S.APPROVED, after=-SECOND)


# -- wait_for --------------------------------------------------------------------------------------


def test_wait_for_returns_at_once_wakes_on_the_move_and_times_out(gov: Governance) -> None:
    gov.create("exp")
    assert gov.wait_for("exp", [S.DRAFT], timeout=0).state is S.DRAFT
    with pytest.raises(TimeoutError, match=r"did not reach Paused within 0.2 s \(it was Draft"):
        gov.wait_for("exp", "Paused", timeout=0.2)
    with pytest.raises(NotFoundError):
        gov.wait_for("ghost", S.PAUSED, timeout=0.1)
    with pytest.raises(ValidationError):
        gov.wait_for("exp", ["Nope"], timeout=1)

    def mover() -> None:
        time.sleep(0.2)
        gov.transition("exp", S.PENDING_APPROVAL)
        gov.transition("exp", S.DRAFT)  # gone again at once: wait_for still reports the state reached

    thread = threading.Thread(target=mover)
    started = time.monotonic()
    thread.start()
    try:
        reached = gov.wait_for("exp", [S.PENDING_APPROVAL, S.APPROVED], timeout=10)
    finally:
        thread.join(10)
    assert not thread.is_alive()
    assert reached.state is S.PENDING_APPROVAL and time.monotonic() - started < 5


def test_async_wait_for(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with AsyncGovernance(redgov.aio.connect(redis_url, prefix=prefix)) as agov:
            await agov.create("exp")

            async def mover() -> None:
                await asyncio.sleep(0.2)
                await agov.transition("exp", S.PENDING_APPROVAL)

            task = asyncio.create_task(mover())
            reached = await agov.wait_for("exp", S.PENDING_APPROVAL, timeout=10)
            await task
            assert reached.state is S.PENDING_APPROVAL and reached.revision == 2
            with pytest.raises(TimeoutError):
                await agov.wait_for("exp", S.RUNNING, timeout=0.2)

    try:
        asyncio.run(main())
    finally:
        with redis.Redis.from_url(redis_url) as client:
            delete_prefix(client, prefix)



def test_awaiting_approval_lists_the_moves_a_manual_gate_blocks_now(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED), ManualGate(from_state=S.APPROVED, to_state=S.RUNNING)])
    for name in ("b", "a", "c"):
        gov.create(name)
        gov.transition(name, S.PENDING_APPROVAL)
    gov.create("draft")  # Draft -> Approved is not a rule: nothing to approve
    gov.approve("b", S.APPROVED, approver="lead")  # approved: waits to be consumed, not in the inbox
    gov.approve("c", S.APPROVED, approver="lead", valid_for=timedelta(milliseconds=30))
    time.sleep(0.06)  # expired: blocking again
    inbox = gov.awaiting_approval()
    assert [(m.experiment, m.from_state, m.to_state, m.gate) for m in inbox] == [
        ("a", S.PENDING_APPROVAL, S.APPROVED, "manual:*->Approved"),
        ("c", S.PENDING_APPROVAL, S.APPROVED, "manual:*->Approved")]
    assert inbox[0].state == gov.state("a")
    gov.transition("b", S.APPROVED)
    # Approved -> Running is gated but nobody asked for it yet: the inbox lists requested moves only
    assert [(m.experiment, m.to_state) for m in gov.awaiting_approval()] == [("a", S.APPROVED), ("c", S.APPROVED)]
    gov.request("b", S.RUNNING, actor="ops", reason="ready")
    assert [(m.experiment, m.to_state, m.requested_by, m.reason) for m in gov.awaiting_approval()] == [
        ("a", S.APPROVED, None, None), ("b", S.RUNNING, "ops", "ready"), ("c", S.APPROVED, None, None)]
    assert make().awaiting_approval() == []  # no ManualGate: nothing ever waits
    assert gov.awaiting_approval(tenant="elsewhere") == []
    # one experiment: the same answer for it, from its state alone
    assert gov.awaiting_approval(experiment="b") == [m for m in gov.awaiting_approval() if m.experiment == "b"]
    assert gov.awaiting_approval(experiment="draft") == []
    assert gov.awaiting_approval(experiment="never-created") == []
    with pytest.raises(ValidationError):
        gov.awaiting_approval(experiment="")
