"""Quick start: one experiment through a manual gate, a role gate and a policy; then its history
and a replay of its log.

    python examples/quickstart.py

REDGOV_URL chooses the server (default redis://localhost:6379/0); the keys go under the prefix
``example-quickstart:`` (``$REDGOV_EXAMPLE_PREFIX`` to choose another). Each run governs a new
experiment, so the script runs as often as you like and prints the same each time.
"""

from __future__ import annotations

import os
import uuid

import redgov
from redgov import ErrorRate, Governance, ManualGate, RoleGate
from redgov import LifecycleState as S

URL = os.environ.get("REDGOV_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("REDGOV_EXAMPLE_PREFIX", "example-quickstart:")


def main() -> None:
    name = f"checkout-{uuid.uuid4().hex[:8]}"  # a new experiment each run
    gates = [ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)]
    with Governance(redgov.connect(URL, prefix=PREFIX), gates=gates, policies=[ErrorRate(0.05)]) as gov:
        gov.create(name, actor="ana", configuration={"rollout": {"percent": 5}})
        gov.transition(name, S.PENDING_APPROVAL, actor="ana", reason="ready for review")
        try:
            gov.transition(name, S.APPROVED, actor="ana")
        except redgov.ApprovalRequiredError:
            print("refused: Approved needs a manual approval first")
        gov.approve(name, S.APPROVED, approver="lead", reason="design reviewed")
        gov.transition(name, S.APPROVED, actor="ana")  # consumes lead's approval
        gov.transition(name, S.RUNNING, actor="ana", telemetry={"errorRate": 0.01})
        try:
            gov.transition(name, S.RAMPING, actor="dev", metadata={"actorRole": "developer"},
                           telemetry={"errorRate": 0.01})
        except redgov.ApprovalRequiredError:
            print("refused: only an sre may ramp")
        try:
            gov.transition(name, S.RAMPING, actor="sam", metadata={"actorRole": "sre"},
                           telemetry={"errorRate": 0.09})
        except redgov.PolicyViolationError as refused:
            print("refused by policy:", [e.policy for e in refused.evaluations if not e.compliant])
        gov.create_version(name, {"rollout": {"percent": 20}}, actor="sam", description="ramp to 20%")
        gov.transition(name, S.RAMPING, actor="sam", metadata={"actorRole": "sre"}, telemetry={"errorRate": 0.01})
        for move in gov.history(name):
            print(f"{move.from_state.value if move.from_state else '-':>15} -> {move.to_state.value:<15} "
                  f"by {move.actor}")
        state = gov.state(name)
        assert state is not None
        print("now", state.state.value, "with configuration version", state.config_version,
              "| replay of the log equals the state:", gov.replay(name) == state)


if __name__ == "__main__":
    main()
