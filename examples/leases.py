"""Fenced leases between two processes: a controller drives an experiment under a lease and stalls;
a standby process, woken when the experiment is paused, takes over once the lease has expired (by
the Redis server's clock); the stalled controller's next write is refused.

    python examples/leases.py

REDGOV_URL chooses the server (default redis://localhost:6379/0); the keys go under the prefix
``example-leases:`` (``$REDGOV_EXAMPLE_PREFIX`` to choose another). Each run drives a new
experiment, so every run prints the same. It takes about two seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from datetime import timedelta

import redgov
from redgov import Governance, LeaseError
from redgov import LifecycleState as S

URL = os.environ.get("REDGOV_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("REDGOV_EXAMPLE_PREFIX", "example-leases:")


def standby(name: str, controller_token: int) -> None:
    """Another process: sleeps on the scope's log until the experiment is paused, then takes over."""
    with Governance(redgov.connect(URL, prefix=PREFIX)) as gov:
        gov.wait_for(name, S.PAUSED, timeout=30)  # XREAD BLOCK on the log, no polling
        deadline = time.monotonic() + 30
        while True:  # the controller's lease must expire first
            try:
                lease = gov.acquire_lease(name, owner="standby", ttl=timedelta(seconds=10))
                break
            except LeaseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        gov.transition(name, S.RUNNING, lease=lease, actor="standby", reason="standby resumes")
        print("standby: took over with a greater fencing token:", lease.token > controller_token)
        gov.release_lease(lease)


def main() -> None:
    name = f"ramp-{uuid.uuid4().hex[:8]}"  # a new experiment each run
    with Governance(redgov.connect(URL, prefix=PREFIX)) as gov:
        gov.create(name, actor="controller")
        lease = gov.acquire_lease(name, owner="controller", ttl=timedelta(seconds=1))
        for state in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING, S.PAUSED):
            gov.transition(name, state, lease=lease, actor="controller")  # fenced by the lease's token
        print("controller: paused the experiment, then stalls", flush=True)  # before the other process prints
        other = multiprocessing.get_context("spawn").Process(target=standby, args=(name, lease.token))
        other.start()
        other.join(60)  # the controller stalls past its lease's expiry meanwhile
        assert other.exitcode == 0, f"the standby process failed (exit {other.exitcode})"
        try:
            gov.transition(name, S.ROLLED_BACK, lease=lease, actor="controller")
        except LeaseError:
            print("controller: its write with the old token is refused; nothing was written")
        state = gov.state(name)
        assert state is not None
        print("the experiment is", state.state.value, "by", state.last_modified_by)


if __name__ == "__main__":
    main()
