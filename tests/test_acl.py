"""A least-privilege ACL user runs the whole API, the CLI and the exporter; refusals are named.

Measured on v1: keys began with ``{`` (``prod:governance:`` became ``{prod%3Agovernance%3A:...}``), so
``ACL SETUSER ... ~prod:governance:*`` denied everything, and a command the ACL refused inside a
script surfaced as ``CorruptDataError``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redgov
from redgov import AccessDeniedError, Governance, LifecycleState, ManualGate, RoleGate, TrafficLimit

from .servers import RedisProcess, redis7_server

S = LifecycleState
PREFIX = "prod:governance:"
#: the README's line (Least privilege): the prefix's keys, the invalidation channel, nothing dangerous
ACL_LINE = ["on", ">s3cret", "resetkeys", f"~{PREFIX}*", "resetchannels", "&__redis__:invalidate",
            "+@all", "-@dangerous"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisProcess]:
    process = RedisProcess(binary=redis7_server())  # scripts check the ACL before writing on Redis >= 7.0
    admin = process.client()
    admin.execute_command("ACL", "SETUSER", "gov", *ACL_LINE)
    admin.execute_command("ACL", "SETUSER", "norpush", *ACL_LINE[:-2], "+@all", "-@dangerous", "-rpush")
    admin.execute_command("ACL", "SETUSER", "otherkeys", "on", ">s3cret", "resetkeys", "~elsewhere:*",
                          "resetchannels", "+@all", "-@dangerous")
    yield process
    process.stop()


def user_url(server: RedisProcess, user: str = "gov") -> str:
    return f"redis://{user}:s3cret@127.0.0.1:{server.port}/0"


def snapshot(server: RedisProcess) -> dict[bytes, object]:
    admin = server.client()
    return {key: admin.dump(key) for key in sorted(admin.scan_iter(count=1000))}


def test_the_whole_api_runs_as_the_least_privileged_user(server: RedisProcess) -> None:
    url = user_url(server)
    gov = Governance(redgov.connect(url, prefix=PREFIX, cache=True),
                     gates=[ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)],
                     policies=[TrafficLimit(50)])
    try:
        gov.create("checkout", actor="ana", configuration={"rollout": 5}, idempotency_key="c1")
        gov.transition("checkout", S.PENDING_APPROVAL, idempotency_key="t1")
        gov.approve("checkout", S.APPROVED, approver="lead")
        moved = gov.transition("checkout", S.APPROVED)
        gov.transition("checkout", S.RUNNING, telemetry={"trafficPercentage": 10})
        gov.transition("checkout", S.RAMPING, metadata={"actorRole": "sre"})
        with pytest.raises(redgov.PolicyViolationError):
            gov.transition("checkout", S.RUNNING, telemetry={"trafficPercentage": 90})
        gov.create_version("checkout", {"rollout": 20})
        gov.rollback("checkout", 1)
        assert [c.path for c in gov.diff("checkout", 1, 2)] == ["rollout"]
        gov.evaluate_policies("checkout", telemetry={"trafficPercentage": 10})
        assert len(gov.history("checkout")) == 5 and gov.verify("checkout") == []
        assert gov.backplane.approvals_for_transition(moved.transition_id)[0].approver == "lead"
        assert [s.experiment for s in gov.experiments()] == ["checkout"]
        assert gov.state("checkout") == gov.state("checkout")  # a cached read
        assert [e.kind for e in gov.watch(from_id="0", timeout=0.5)][:2] == ["state", "transition"]
        lease = gov.acquire_lease("checkout", owner="ctl", ttl=timedelta(seconds=5))  # coordination
        gov.transition("checkout", S.PAUSED, lease=gov.renew_lease(lease, ttl=timedelta(seconds=5)))
        gov.release_lease(lease)
        gov.approve("checkout", S.RUNNING, approver="lead", valid_for=timedelta(minutes=5))
        assert gov.wait_for("checkout", S.PAUSED, timeout=1).state is S.PAUSED
        every_key = [k.decode() for k in server.client().scan_iter(count=1000)]
        assert every_key and all(k.startswith(PREFIX + "{") for k in every_key)
    finally:
        gov.close()

    async def async_use() -> None:
        agov = redgov.aio.AsyncGovernance(redgov.aio.connect(url, prefix=PREFIX, cache=True))
        try:
            assert (await agov.state("checkout")) is not None
            await agov.create("async-one")
        finally:
            await agov.close()

    asyncio.run(async_use())


def run_cli(tmp_path: Path, url: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "redgov", "--url", url, "--prefix", PREFIX, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    return done


def test_the_cli_and_the_exporter_run_as_the_least_privileged_user(server: RedisProcess, tmp_path: Path) -> None:
    url = user_url(server)
    run_cli(tmp_path, url, "create", "cli-exp", "--actor", "ana")
    run_cli(tmp_path, url, "transition", "cli-exp", "PendingApproval", "--actor", "ana")
    assert "PendingApproval" in run_cli(tmp_path, url, "state", "cli-exp").stdout
    run_cli(tmp_path, url, "verify")
    sql = f"sqlite:///{tmp_path / 'copy.db'}"
    run_cli(tmp_path, url, "export", "--to", sql)
    run_cli(tmp_path, url, "trim", "--to", sql)
    assert "PendingApproval" in run_cli(tmp_path, url, "state", "cli-exp").stdout
    run_cli(tmp_path, url, "restore", "--from", sql, "--force")
    run_cli(tmp_path, url, "verify", "cli-exp")


def test_a_missing_command_permission_is_named_and_nothing_is_written(server: RedisProcess) -> None:
    setup = Governance(redgov.connect(user_url(server), prefix=PREFIX))
    setup.create("denied-exp")
    setup.close()
    before = snapshot(server)
    gov = Governance(redgov.connect(user_url(server, "norpush"), prefix=PREFIX))
    try:
        with pytest.raises(AccessDeniedError, match="(?i)rpush"):
            gov.transition("denied-exp", S.PENDING_APPROVAL)
        with pytest.raises(AccessDeniedError, match="(?i)rpush"):
            gov.create("another")
        assert snapshot(server) == before
        assert gov.state("denied-exp") is not None  # reads are allowed
    finally:
        gov.close()


def test_keys_outside_the_users_pattern_are_refused_by_name(server: RedisProcess) -> None:
    before = snapshot(server)
    gov = Governance(redgov.connect(user_url(server, "otherkeys"), prefix=PREFIX))
    try:
        with pytest.raises(AccessDeniedError) as info:
            gov.create("nope")
        assert "CorruptDataError" not in repr(info.value)
        with pytest.raises(AccessDeniedError, match="NOPERM|ACL"):
            gov.state("nope")
        assert snapshot(server) == before
    finally:
        gov.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port, username="gov", password="wrong",
                    retry=Retry(NoBackoff(), 0)).ping()
