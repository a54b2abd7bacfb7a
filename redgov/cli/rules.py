"""``redgov rules publish|show|history|diff``: a scope's published rules (``Governance.publish``).

``publish`` stores the governance section of ``--config`` (rules, gates, policies, initial
state, requireTelemetry) as the scope's next rules version; from then on they govern every
write to the scope, from any client. ``show`` prints a version as YAML that ``load_config``
loads (``governance:`` root), under comment lines saying who published it, when and why;
``history`` lists the versions; ``diff`` says what two versions differ in, one line each
(``govdefinition.differences``, worded for two versions). Declared in the parser by ``declare``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
from collections.abc import Callable
from typing import Any

import yaml

from ..errors import NotFoundError
from ..govdefinition import differences
from ..records import RulesVersion
from .context import Context
from .output import when
from .parser import UsageError

__all__ = ["COMMANDS", "DETAILS", "between", "declare", "default_actor", "rules_yaml"]

DETAILS = """\
Published rules are one definition per scope (prefix, --tenant, --env): the lifecycle rules,
approval gates and policies of a config file's governance section, stored as immutable,
numbered versions (1, 2, ...). Once a scope has published, they govern every write to it from
any client: a command without --config follows them, and one whose --config defines other
rules is refused (exit 2, naming what differs). Publishing the definition that is already
current writes nothing.

  redgov --config gov.yaml rules publish --reason "two approvers for Running"
  redgov rules show > published.yaml       # loads with redgov.load_config
  redgov rules history
  redgov rules diff 1 2
"""


def declare(command: Callable[..., argparse.ArgumentParser], actions: Callable[..., Any],
            version: Callable[[str], int]) -> None:
    """Add ``rules publish|show|history|diff`` to the parser (``command``, ``actions`` and the version
    number type from ``build_parser``)."""
    p = command("rules", "publish, show, list or compare the scope's published rules", DETAILS)
    action = actions(p, "rules_command", DETAILS)
    q = action("publish", "publish the governance section of --config as the scope's rules (needs --config)")
    q.add_argument("--actor", help="who publishes (recorded; default: the OS user name)")
    q.add_argument("--reason", help="why (recorded with the version)")
    q = action("show", "print the current (or version N) published rules as YAML that load_config loads")
    q.add_argument("version", nargs="?", type=version, metavar="N",
                   help="the version to show (default: the current one)")
    action("history", "list the published versions: number, time, who, reason, hash")
    q = action("diff", "what two published versions differ in, one line each")
    q.add_argument("a", type=version, metavar="A", help="the version to compare from")
    q.add_argument("b", type=version, metavar="B", help="the version to compare to")


def default_actor() -> str:
    """The OS user name (``getpass.getuser()``, else ``$USER``); UsageError when neither is known."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry for the uid
        name = os.environ.get("USER", "")
    if not name:
        raise UsageError("cannot tell the OS user name; give --actor NAME")
    return name


def rules_body(rules: RulesVersion) -> dict[str, Any]:
    """A version as ``--json`` prints it: every field, None ones too."""
    return {"version": rules.version, "rules_hash": rules.rules_hash, "created_at": rules.created_at,
            "created_by": rules.created_by, "reason": rules.reason, "tenant": rules.tenant,
            "environment": rules.environment, "definition": rules.definition}


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _heading(rules: RulesVersion) -> str:
    """``rules version N, published by X at T: reason`` (on one line)."""
    reason = _one_line(rules.reason)
    return (f"rules version {rules.version}, published by {_one_line(rules.created_by) or 'unknown'} at "
            f"{when(rules.created_at)}{': ' + reason if reason else ''}")


def rules_yaml(rules: RulesVersion, where: str) -> str:
    """The version as YAML for ``load_config`` (root ``governance:``), under comment lines naming it."""
    document = yaml.safe_dump({"governance": rules.definition}, sort_keys=False, allow_unicode=True,
                               default_flow_style=False)
    comments = [f"# {_heading(rules)}", f"# {where}, hash {rules.rules_hash}"]
    return "\n".join(comments) + "\n" + document.rstrip("\n")


def _version(ctx: Context, gov: Any, number: int) -> RulesVersion:
    rules: RulesVersion | None = gov.published_rules(version=number, **ctx.scope)
    if rules is None:
        raise NotFoundError(f"no rules version {number} ({ctx.scope_text()}); `redgov rules history` lists them")
    return rules


_PAIR = re.compile(r"^(?P<head>.*) (?P<ours>.*) here, (?P<theirs>.*) published$")
_ORDER = re.compile(r"^(?P<head>.*)\(here: (?P<ours>.*); published: (?P<theirs>.*)\)$")


def between(line: str, a: int, b: int) -> str:
    """A line of ``govdefinition.differences`` (which compares "here" with "published") worded for
    versions ``a`` and ``b``: ``... 1 in v1, 2 in v2``, ``... only in v2``."""
    if line.endswith(" only here"):
        return line[: -len("here")] + f"in v{a}"
    if line.endswith(" only published"):
        return line[: -len("published")] + f"in v{b}"
    if (order := _ORDER.match(line)) is not None:
        return f"{order['head']}(v{a}: {order['ours']}; v{b}: {order['theirs']})"
    if (pair := _PAIR.match(line)) is not None:
        return f"{pair['head']} {pair['ours']} in v{a}, {pair['theirs']} in v{b}"
    return line


# -- the actions --------------------------------------------------------------------------------


def _publish(ctx: Context) -> int:
    a = ctx.args
    if ctx.config is None:
        raise UsageError("rules publish needs --config FILE: it publishes that file's governance section "
                         "(rules, approvalGates, policies, initialState, requireTelemetry)")
    actor = a.actor if a.actor is not None else default_actor()
    with ctx.governance() as gov:
        before: RulesVersion | None = gov.published_rules(**ctx.scope)
        rules = gov.publish(actor=actor, reason=a.reason, **ctx.scope)
    written = before is None or before.version != rules.version
    if written:
        text = (f"published rules version {rules.version} ({ctx.scope_text()}), hash {rules.rules_hash[:19]}, "
                f"by {rules.created_by}{': ' + _one_line(rules.reason) if rules.reason else ''}")
    else:
        text = (f"rules version {rules.version} is already current ({ctx.scope_text()}), hash "
                f"{rules.rules_hash[:19]}: the definition is the same, nothing written")
    ctx.out.emit({**rules_body(rules), "written": written}, text)
    return 0


def _show(ctx: Context) -> int:
    number: int | None = ctx.args.version
    with ctx.governance() as gov:
        rules = gov.published_rules(**ctx.scope) if number is None else _version(ctx, gov, number)
    if rules is None:
        ctx.out.emit({"version": None, "definition": None, "tenant": ctx.tenant, "environment": ctx.environment,
                      "message": "no rules published for this scope"},
                     f"no rules published for this scope ({ctx.scope_text()})")
        return 0
    ctx.out.emit(rules_body(rules), rules_yaml(rules, ctx.scope_text()))
    return 0


def _history(ctx: Context) -> int:
    with ctx.governance() as gov:
        versions = gov.rules_history(**ctx.scope)
    out = ctx.out
    rows = [(v.version, when(v.created_at), v.created_by, _one_line(v.reason), v.rules_hash[:19],
             "*" if i == len(versions) - 1 else "") for i, v in enumerate(versions)]
    text = (out.table(rows, ["version", "published", "by", "reason", "hash", "current"]) if rows
            else f"no rules published for this scope ({ctx.scope_text()})")
    out.emit({"versions": [rules_body(v) for v in versions], "count": len(versions),
              "current": versions[-1].version if versions else None, "tenant": ctx.tenant,
              "environment": ctx.environment}, text)
    return 0


def _diff(ctx: Context) -> int:
    a, b = ctx.args.a, ctx.args.b
    with ctx.governance() as gov:
        first, second = _version(ctx, gov, a), _version(ctx, gov, b)
    lines = [between(line, a, b) for line in differences(first.definition, second.definition)]
    ctx.out.emit({"from": a, "to": b, "from_hash": first.rules_hash, "to_hash": second.rules_hash,
                  "differences": lines, "tenant": ctx.tenant, "environment": ctx.environment},
                 "\n".join(lines) if lines else f"no differences between rules versions {a} and {b}")
    return 0


_ACTIONS: dict[str, Callable[[Context], int]] = {
    "publish": _publish, "show": _show, "history": _history, "diff": _diff,
}


def cmd_rules(ctx: Context) -> int:
    return _ACTIONS[ctx.args.rules_command](ctx)


COMMANDS: dict[str, Callable[[Context], int]] = {"rules": cmd_rules}
