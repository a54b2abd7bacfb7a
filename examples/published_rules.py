"""Published rules and four eyes: a team publishes its gates once; a plain Governance (a script, the
CLI, ``redgov serve``) follows them; two people other than the requester must approve.

    python examples/published_rules.py

REDGOV_URL chooses the server (default redis://localhost:6379/0); the keys go under the prefix
``example-rules:`` (``$REDGOV_EXAMPLE_PREFIX`` to choose another). Publishing the same definition
again writes nothing, and each run asks for a new experiment's move, so every run prints the same.
"""

from __future__ import annotations

import os
import uuid

import redgov
from redgov import ErrorRate, Governance, ManualGate
from redgov import LifecycleState as S

URL = os.environ.get("REDGOV_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("REDGOV_EXAMPLE_PREFIX", "example-rules:")


def main() -> None:
    with redgov.connect(URL, prefix=PREFIX) as bp:
        team = Governance(bp, gates=[ManualGate(to_state=S.RUNNING, approvals=2)], policies=[ErrorRate(0.05)])
        rules = team.publish(actor="platform", reason="two approvers before any traffic")
        print(f"rules version {rules.version}, published by {rules.created_by}")

        plain = Governance(bp)  # no definition of its own: it follows the published version
        name = f"search-{uuid.uuid4().hex[:8]}"  # a new experiment each run
        plain.create(name, actor="ana")
        plain.transition(name, S.PENDING_APPROVAL, actor="ana")
        plain.transition(name, S.APPROVED, actor="ana")
        plain.request(name, S.RUNNING, actor="ana", reason="ready for 5 %")
        try:
            plain.approve(name, S.RUNNING, approver="ana")
        except redgov.SeparationOfDutiesError:
            print("refused: ana asked for the move, so she may not approve it")
        plain.approve(name, S.RUNNING, approver="lead")
        (waiting,) = plain.awaiting_approval(experiment=name)
        print(f"{waiting.approvals_given} of {waiting.approvals_needed} approvals, requested by {waiting.requested_by}")
        try:
            plain.transition(name, S.RUNNING, actor="ana", telemetry={"errorRate": 0.01})
        except redgov.ApprovalRequiredError:
            print("refused: one approval is not enough")
        plain.approve(name, S.RUNNING, approver="sre-on-call")
        moved = plain.transition(name, S.RUNNING, actor="ana", telemetry={"errorRate": 0.01})
        approvers = sorted(a.approver for a in bp.approvals_for_transition(moved.transition_id))
        print(f"{moved.from_state.value if moved.from_state else '-'} -> {moved.to_state.value}, approved by",
              " and ".join(approvers))
        try:
            Governance(bp, gates=[ManualGate(to_state=S.RUNNING)]).transition(name, S.PAUSED, actor="ana")
        except redgov.RulesMismatchError:
            print("refused: a client with other rules may not write to this scope")


if __name__ == "__main__":
    main()
