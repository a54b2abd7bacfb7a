"""``redgov demo``: one experiment's whole life, told in a few lines.

Draft -> PendingApproval -> (manual approval) -> Approved -> Running ->
(role gate) Ramping -> (policy refusal) -> configuration version and rollback
-> two processes racing one transition -> Paused -> Archived, then a replay
of the event log that equals the stored state.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import uuid
from datetime import timedelta
from typing import Any

import msgspec

from .connect import connect
from .errors import ConflictError, RedgovError
from .gates import ManualGate, RoleGate
from .governance import Governance
from .policies import ErrorRate, TrafficLimit
from .records import LifecycleState

__all__ = ["run_demo"]

S = LifecycleState


def _governance(url: str, prefix: str) -> Governance:
    return Governance(
        connect(url, prefix=prefix),
        gates=[ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)],
        policies=[ErrorRate(0.05, name="error-budget"), TrafficLimit(25, timedelta(minutes=30), name="ramp-limit")],
    )


def _race(url: str, prefix: str, experiment: str, etag: str, who: str, start: Any, results: Any) -> None:
    """One racer: move the experiment to Paused, guarded by the etag both racers read."""
    with _governance(url, prefix) as gov:
        start.wait(10)
        try:
            gov.transition(experiment, S.PAUSED, actor=who, reason="race", expected_etag=etag)
            results.put((who, "won"))
        except ConflictError:
            results.put((who, "conflict"))


class _Say:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.step = 0

    def __call__(self, text: str, **data: Any) -> None:
        self.step += 1
        if self.as_json:
            sys.stdout.write(msgspec.json.encode({"step": self.step, "message": text, **data}).decode() + "\n")
        else:
            sys.stdout.write(f"{self.step:>2}. {text}\n")
        sys.stdout.flush()


def _server_of(gov: Governance) -> str:
    """Which server the demo runs on, as its INFO says (``Valkey 9.1.2``, ``Redis 7.0.15``, ``fakeredis``)."""
    try:
        info = gov.backplane.client.info("server")
    except Exception:  # noqa: BLE001 - a Cluster or in-process client: say what it is
        return type(gov.backplane.client).__module__.split(".")[0]
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        return f"Valkey {info.get('valkey_version', info.get('redis_version', '?'))}"
    if "fakeredis" in type(gov.backplane.client).__module__:
        return "fakeredis (in-process)"
    return f"Redis {info.get('redis_version', '?')}"


def run_demo(url: str, prefix: str, as_json: bool = False) -> int:
    say = _Say(as_json)
    exp = f"checkout-{uuid.uuid4().hex[:6]}"
    with _governance(url, prefix) as gov:
        state = gov.create(exp, actor="ana", configuration={"rollout": {"percent": 5}, "variant": "express"})
        say(f"created {exp} in {state.state.value} with configuration v{state.config_version} (on {url}, "
            f"{_server_of(gov)})", experiment=exp, state=state.state)
        gov.transition(exp, S.PENDING_APPROVAL, actor="ana", reason="ready for review")
        say("ana submitted it: Draft -> PendingApproval", experiment=exp, state=S.PENDING_APPROVAL)
        try:
            gov.transition(exp, S.APPROVED, actor="ana")
        except RedgovError as refused:
            say(f"approving without sign-off is refused: {refused}", experiment=exp, state=S.PENDING_APPROVAL)
        gov.approve(exp, S.APPROVED, approver="lead", reason="design reviewed")
        moved = gov.transition(exp, S.APPROVED, actor="ana")
        linked = gov.backplane.approvals_for_transition(moved.transition_id)
        say(f"lead approved; the transition consumed that approval (linked: {linked[0].approver})",
            experiment=exp, state=S.APPROVED)
        gov.transition(exp, S.RUNNING, actor="ana", telemetry={"trafficPercentage": 5, "errorRate": 0.01})
        say("started: Approved -> Running at 5% traffic", experiment=exp, state=S.RUNNING)
        try:
            gov.transition(exp, S.RAMPING, actor="dev", metadata={"actorRole": "developer"})
        except RedgovError as refused:
            say(f"a developer may not ramp: {refused}", experiment=exp, state=S.RUNNING)
        try:
            gov.transition(exp, S.RAMPING, actor="sam", metadata={"actorRole": "sre"},
                           telemetry={"trafficPercentage": 50, "errorRate": 0.09})
        except RedgovError as refused:
            still = gov.state(exp)
            say(f"the guardrails refused ramping: {refused} (state still {still.state.value if still else '?'})",
                experiment=exp, state=S.RUNNING)
        gov.transition(exp, S.RAMPING, actor="sam", metadata={"actorRole": "sre"},
                       telemetry={"trafficPercentage": 20, "errorRate": 0.01})
        say("sam (sre) ramped it to 20%: Running -> Ramping", experiment=exp, state=S.RAMPING)
        v2 = gov.create_version(exp, {"rollout": {"percent": 20}, "variant": "express-v2"}, actor="sam")
        changes = ", ".join(f"{c.kind} {c.path}" for c in gov.diff(exp, 1, 2))
        say(f"configuration v{v2.version}: {changes}", experiment=exp, state=S.RAMPING)
        back = gov.rollback(exp, 1, actor="sam")
        say(f"rolled back: v{back.version} restores v{back.rolled_back_from}", experiment=exp, state=S.RAMPING)

        current = gov.state(exp)
        assert current is not None
        outcomes = _run_race(url, prefix, exp, current.etag)
        say("two processes raced Ramping -> Paused with the same etag: "
            + ", ".join(f"{who} {what}" for who, what in sorted(outcomes)), experiment=exp, state=S.PAUSED)
        gov.transition(exp, S.ARCHIVED, actor="ana", reason="done")
        final = gov.state(exp)
        replayed = gov.replay(exp)
        say(f"archived after {len(gov.history(exp))} transitions; replay of the log equals the stored state: "
            f"{replayed == final} (revision {final.revision if final else '?'})",
            experiment=exp, state=S.ARCHIVED, consistent=replayed == final)
        return 0 if replayed == final and sorted(w for _, w in outcomes) == ["conflict", "won"] else 1


def _run_race(url: str, prefix: str, experiment: str, etag: str) -> list[tuple[str, str]]:
    if url.startswith("memory://"):  # one process's memory: race two threads instead
        import queue

        start_t = threading.Event()
        results_q: queue.Queue[tuple[str, str]] = queue.Queue()
        threads = [threading.Thread(target=_race, args=(url, prefix, experiment, etag, who, start_t, results_q))
                   for who in ("process-1", "process-2")]
        for t in threads:
            t.start()
        start_t.set()
        for t in threads:
            t.join(30)
        return [results_q.get(timeout=5) for _ in threads]
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    results = spawn.Queue()
    procs = [spawn.Process(target=_race, args=(url, prefix, experiment, etag, who, start, results))
             for who in ("process-1", "process-2")]
    for p in procs:
        p.start()
    start.set()
    found = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return found
