"""Commands that read and change experiments: list, create, state, transition, approve, request,
configure, versions, diff, rollback (transition, configure and rollback fenced by
``--lease-owner/--lease-token`` when given). Each takes the Context, prints one outcome and returns 0;
refusals are raised (``main`` turns them into an exit status). ``COMMANDS`` also carries
``rules`` (rules.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from . import rules
from .context import Context
from .coordination import fence
from .output import short, state_line, when
from .parser import UsageError

__all__ = ["COMMANDS", "read_configuration"]


def read_configuration(source: str) -> dict[str, Any]:
    """A configuration mapping from a YAML or JSON file, or standard input for ``-``. UsageError (exit 2)
    when it cannot be read or is not a mapping."""
    where = "standard input" if source == "-" else repr(source)
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"configuration file {where} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read configuration file {where}: {exc}") from None
    try:
        if source.lower().endswith(".json") or text.lstrip().startswith(("{", "[")):
            document = json.loads(text)
        else:
            document = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"configuration {where} is not valid YAML or JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise UsageError(f"configuration {where} must be a mapping (key: value), got {type(document).__name__}")
    return document


def cmd_list(ctx: Context) -> int:
    out = ctx.out
    with ctx.governance() as gov:
        states = gov.experiments(state=ctx.args.state, **ctx.scope)
    rows = [(s.experiment, s.state.value, s.config_version, when(s.last_modified), s.last_modified_by)
            for s in states]
    if rows:
        text = out.table(rows, ["name", "state", "version", "modified", "by"], {1: out.styled})
    else:
        only = f" in state {ctx.args.state.value}" if ctx.args.state else ""
        text = f"no experiments{only} in {ctx.store_text()}"
    out.emit({"experiments": states, "count": len(states)}, text)  # each one as `state --json` prints it
    return 0


def cmd_create(ctx: Context) -> int:
    a = ctx.args
    configuration = read_configuration(a.configuration) if a.configuration else None
    with ctx.governance() as gov:
        state = gov.create(a.experiment, actor=a.actor, configuration=configuration,
                           idempotency_key=a.idempotency_key, **ctx.scope)
    ctx.out.emit(state, "created " + state_line(state, ctx.out.state))
    return 0


def cmd_state(ctx: Context) -> int:
    with ctx.governance() as gov:
        state = ctx.existing(gov, ctx.args.experiment)
    ctx.out.emit(state, state_line(state, ctx.out.state))
    return 0


def cmd_transition(ctx: Context) -> int:
    a = ctx.args
    metadata = {"actorRole": a.role} if a.role else None
    telemetry = dict(a.telemetry) if a.telemetry else None
    lease = fence(ctx)
    with ctx.governance() as gov:
        moved = gov.transition(a.experiment, a.state, actor=a.actor, reason=a.reason, metadata=metadata,
                               telemetry=telemetry, expected_etag=a.etag, idempotency_key=a.idempotency_key,
                               lease=lease, **ctx.scope)
    out = ctx.out
    out.emit({"experiment": a.experiment, "state": moved.to_state, "from": moved.from_state,
              "revision": moved.revision, "etag": moved.etag, "transition": moved},
             f"{a.experiment}: {out.state(moved.from_state)} -> {out.state(moved.to_state)} "
             f"(revision {moved.revision}, etag {moved.etag})")
    return 0


def cmd_approve(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        record = gov.approve(a.experiment, a.state, approver=a.approver, reason=a.reason, approved=not a.reject,
                             idempotency_key=a.idempotency_key,
                             valid_for=None if a.valid_for is None else timedelta(seconds=a.valid_for), **ctx.scope)
    out = ctx.out
    verb = "approved" if record.approved else "rejected"
    until = f", valid until {when(record.valid_until)}" if record.valid_until is not None else ""
    out.emit({"experiment": a.experiment, "state": record.from_state, "approval": record},
             f"{a.experiment}: {out.state(record.from_state)} -> {out.state(record.to_state)} {verb} "
             f"by {record.approver}{until}")
    return 0


def cmd_request(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        move = gov.request(a.experiment, a.state, actor=a.actor, reason=a.reason,
                           idempotency_key=a.idempotency_key, **ctx.scope)
    out = ctx.out
    why = f" ({' '.join(move.reason.split())})" if move.reason else ""
    if move.approvals_needed:
        needs = f"approvals {move.approvals_given} of {move.approvals_needed}"
        if move.gate:
            needs += f" (gate {move.gate})"
    else:
        needs = "no manual gate guards this move: it needs no approval"
    out.emit({"experiment": a.experiment, "state": move.from_state, "to": move.to_state, "request": move},
             f"{a.experiment}: {out.state(move.from_state)} -> {out.state(move.to_state)} requested by "
             f"{move.requested_by or a.actor}{why}; {needs}")
    return 0


def cmd_configure(ctx: Context) -> int:
    a = ctx.args
    configuration = read_configuration(a.file)
    lease = fence(ctx)
    with ctx.governance() as gov:
        version = gov.create_version(a.experiment, configuration, actor=a.actor, description=a.description,
                                     idempotency_key=a.idempotency_key, lease=lease, **ctx.scope)
        state = gov.state(a.experiment, **ctx.scope)
    live = state is not None and state.config_version == version.version
    ctx.out.emit({"experiment": a.experiment, "state": state.state if state else None, "version": version},
                 f"{a.experiment}: configuration version {version.version}{' (live)' if live else ''}, "
                 f"hash {version.configuration_hash[:12]}")
    return 0


def cmd_versions(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        state = ctx.existing(gov, a.experiment)
        versions = gov.backplane.versions(a.experiment, limit=a.limit, newest_first=a.newest_first, **ctx.scope)
    rows = [(v.version, when(v.created_at), v.created_by,
             f"rollback of v{v.rolled_back_from}" if v.is_rollback else (v.description or ""),
             v.configuration_hash[:12], "*" if state.config_version == v.version else "")
            for v in versions]
    text = ctx.out.table(rows, ["version", "created", "by", "description", "hash", "live"]) if rows else "no versions"
    ctx.out.emit({"experiment": a.experiment, "state": state.state, "config_version": state.config_version,
                  "versions": versions}, text)
    return 0


def cmd_diff(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance(archive=True) as gov:
        changes = gov.diff(a.experiment, a.a, a.b, **ctx.scope)
        state = gov.state(a.experiment, **ctx.scope)
    rows = [(c.kind, c.path, short(c.old), short(c.new)) for c in changes]
    text = ctx.out.table(rows, ["change", "path", "old", "new"]) if rows else "no differences"
    ctx.out.emit({"experiment": a.experiment, "state": state.state if state else None, "from": a.a, "to": a.b,
                  "changes": changes}, text)
    return 0


def cmd_rollback(ctx: Context) -> int:
    a = ctx.args
    lease = fence(ctx)
    with ctx.governance(archive=True) as gov:
        version = gov.rollback(a.experiment, a.version, actor=a.actor, idempotency_key=a.idempotency_key,
                               lease=lease, **ctx.scope)
        state = gov.state(a.experiment, **ctx.scope)
    ctx.out.emit({"experiment": a.experiment, "state": state.state if state else None, "version": version},
                 f"{a.experiment}: version {version.version} restores the configuration of version {a.version}")
    return 0


COMMANDS: dict[str, Callable[[Context], int]] = {
    "list": cmd_list, "create": cmd_create, "state": cmd_state, "transition": cmd_transition,
    "approve": cmd_approve, "request": cmd_request, "configure": cmd_configure, "versions": cmd_versions,
    "diff": cmd_diff, "rollback": cmd_rollback,
    **rules.COMMANDS,  # rules publish|show|history|diff (redgov.cli.__init__ merges this table only)
}
