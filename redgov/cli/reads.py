"""Commands that read the event log: history, approvals, evaluations, replay, verify, watch.

History reads go through the SQL copy when one is named (``--archive``, the
environment or the config), so they are whole after ``redgov trim``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .context import Context
from .output import RED, state_line, when

__all__ = ["COMMANDS"]


def _move(source: Any, target: Any) -> str:
    return f"{source.value if source else '-'} -> {target.value if target else '-'}"


def _trimmed_hint(ctx: Context) -> str:
    """Every created experiment has a transition: none left means Redis no longer holds them."""
    if ctx.archive_url()[0] is None:
        return " in Redis (trimmed? read the SQL copy with --archive SQL_URL)"
    return ""


def cmd_history(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        state = ctx.existing(gov, a.experiment)
        history = gov.history(a.experiment, limit=a.limit, newest_first=a.newest_first, **ctx.scope)
    out = ctx.out
    rows = [(when(t.timestamp), t.from_state.value if t.from_state else "-", t.to_state.value, t.actor,
             t.metadata.get("actorRole") if isinstance(t.metadata, dict) else None, t.reason) for t in history]
    text = (out.table(rows, ["time", "from", "to", "actor", "role", "reason"], {1: out.styled, 2: out.styled})
            if rows else "no transitions" + _trimmed_hint(ctx))
    out.emit({"experiment": a.experiment, "state": state.state, "transitions": history}, text)
    return 0


def cmd_approvals(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        state = ctx.existing(gov, a.experiment)
        approvals = gov.backplane.approvals(a.experiment, limit=a.limit, newest_first=a.newest_first, **ctx.scope)
    out = ctx.out
    rows = [(when(r.timestamp), _move(r.from_state, r.to_state), "approved" if r.approved else "rejected",
             r.approver, r.gate, r.reason) for r in approvals]
    text = (out.table(rows, ["time", "move", "decision", "approver", "gate", "reason"])
            if rows else "no approvals")
    out.emit({"experiment": a.experiment, "state": state.state, "approvals": approvals}, text)
    return 0


def cmd_evaluations(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        state = ctx.existing(gov, a.experiment)
        evaluations = gov.backplane.policy_evaluations(a.experiment, limit=a.limit, newest_first=a.newest_first,
                                                       **ctx.scope)
    out = ctx.out
    rows = [(when(e.timestamp), e.policy, e.severity.value, "yes" if e.compliant else "no",
             _move(e.current_state, e.target_state), e.reason) for e in evaluations]
    text = (out.table(rows, ["time", "policy", "severity", "compliant", "move", "reason"], {3: out.styled})
            if rows else "no policy evaluations")
    out.emit({"experiment": a.experiment, "state": state.state, "evaluations": evaluations}, text)
    return 0


def cmd_replay(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        replayed = gov.replay(a.experiment, until=a.until, **ctx.scope)
        if replayed is None:
            ctx.existing(gov, a.experiment)  # NotFoundError unless it exists now (and did not yet at --until)
    if replayed is None:
        ctx.out.emit({"experiment": a.experiment, "state": None, "until": a.until},
                     f"{a.experiment}: no state yet as of {when(a.until)}")
        return 0
    ctx.out.emit(replayed, "replayed " + state_line(replayed, ctx.out.state))
    return 0


def cmd_verify(ctx: Context) -> int:
    """One line per difference; "consistent" when there is none. Exit 1 when differences are found."""
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        if a.experiment:
            states = [ctx.existing(gov, a.experiment)]
        else:
            states = gov.experiments(**ctx.scope)
        results = [(s, gov.verify(s.experiment, **ctx.scope)) for s in states]
    out = ctx.out
    differing = sum(1 for _, diffs in results if diffs)
    lines: list[str] = []
    for state, diffs in results:
        if diffs:
            lines += [f"{state.experiment}: {out.paint('differs', RED)}: {d}" for d in diffs]
        else:
            lines.append(f"{state.experiment}: {out.styled('consistent')}")
    if not a.experiment:  # a summary of the scope
        counted = f"{len(results)} experiment{'' if len(results) == 1 else 's'} ({ctx.scope_text()})"
        if differing:
            lines.append(f"{counted}: {differing} with differences")
        else:
            lines.append(f"{out.styled('ok')}: {counted}, all consistent")
    body: dict[str, Any] = {
        "consistent": not differing,
        "experiments": [{"experiment": s.experiment, "state": s.state, "consistent": not d, "differences": d}
                        for s, d in results],
    }
    if a.experiment:
        body = {"experiment": a.experiment, "state": states[0].state, **body}
    out.emit(body, "\n".join(lines))
    return 1 if differing else 0


def cmd_watch(ctx: Context) -> int:
    a = ctx.args
    out = ctx.out
    with ctx.governance() as gov:
        try:
            for event in gov.watch(experiments=a.experiments, from_id=a.from_id, timeout=a.timeout, **ctx.scope):
                record = event.record
                what = getattr(record, "to_state", None) or getattr(record, "state", None)
                summary = f"{event.id} {event.kind:<10} {event.experiment}"
                if what is not None:
                    summary += f" {out.state(what)}"
                out.emit({"id": event.id, "kind": event.kind, "experiment": event.experiment, "state": what,
                          "record": record}, summary)
        except KeyboardInterrupt:
            pass
    return 0


COMMANDS: dict[str, Callable[[Context], int]] = {
    "history": cmd_history, "approvals": cmd_approvals, "evaluations": cmd_evaluations, "replay": cmd_replay,
    "verify": cmd_verify, "watch": cmd_watch,
}
