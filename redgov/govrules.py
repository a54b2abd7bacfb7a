"""Sans-IO published rules: compiling a definition for the scripts, publishing it, following it.

A scope's rules (allowed moves, gates, policies, initial state) can be published to Redis as an
immutable, numbered ``RulesVersion`` (``{T}:rules``, keys.py). Once a scope has published, the
write scripts judge allowed moves and gates from the stored version (lib/gates.lua), and every
write carries the version it was decided under: a write decided under an older version is
refused inside its script (RULES_CHANGED) and decided again here under the new one.

``compile_target`` turns rules and gates into what lib/gates.lua reads for the moves into one
state: the *steps* string (the states the rules allow into it, each with a step number, 0 for
a move no gate guards) and the gates of each numbered step. The same compilation is stored by
``publish`` and sent by a client of an unpublished scope, so the script has one way to judge.

``RulesPlans`` (a mixin of GovernanceCore) keeps, per scope, the GovernanceCore that governs
it (``views``): the Governance's own definition where the scope never published or published
the same definition, the published one for a Governance built with no definition of its own;
a Governance whose definition differs is refused (RulesMismatchError) before it writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .calls import Call, Plan, new_op
from .errors import CorruptDataError, RulesChangedError, RulesMismatchError, ValidationError
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .govdefinition import definition_of, differences, is_empty, parts_of, rules_hash
from .keys import Scope
from .records import ENCODER, LifecycleState, RulesVersion
from .rules import Rules
from .validate import check_name

if TYPE_CHECKING:
    from .govcore import GovernanceCore

__all__ = ["RULES_ATTEMPTS", "RulesPlans", "compile_target", "span_text"]

T = TypeVar("T")

#: a write refused because the rules changed underneath is decided again this many times at most
RULES_ATTEMPTS = 5
#: versions read per round trip by ``rules_history``
HISTORY_PAGE = 100
_RULES_DECODER = msgspec.json.Decoder(RulesVersion)


def span_text(span: timedelta) -> str:
    """A duration as people write it: 15m, 1h 30m, 2d 3h, 45s, 250ms."""
    ms = int(span.total_seconds() * 1000)
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


def compile_target(rules: Rules, gates: Sequence[Gate], target: LifecycleState) -> tuple[str, dict[str, Any]]:
    """The steps into ``target`` and the gates of each numbered step, as lib/gates.lua reads them.

    Steps: ``'|<source>:<n>|...'`` for each state the rules allow into ``target``, ``n`` 0 when no
    gate guards the move. Gates of step ``n``: ``manual`` (the ManualGate's name), ``need``
    (approvals from distinct approvers), ``self`` (self-approval allowed); ``roles``: one
    ``[gate name, '|role|...|', 'role, ...']`` per RoleGate; ``after``: ``[span µs, gate name,
    wait text]`` of the AutomaticGate with the longest wait.

    Raises:
        ValidationError: a role name holding ``|`` (the scripts' separator).
    """
    parts: list[str] = []
    details: dict[str, Any] = {}
    for number, source in enumerate(rules.sources(target), start=1):
        manual = next((g for g in gates if isinstance(g, ManualGate) and g.applies(source, target)), None)
        roles = [g for g in gates if isinstance(g, RoleGate) and g.applies(source, target)]
        timed = [g for g in gates if isinstance(g, AutomaticGate) and g.after and g.applies(source, target)]
        if manual is None and not roles and not timed:
            parts.append(f"{source.value}:0")
            continue
        step: dict[str, Any] = {}
        if manual is not None:
            step.update(manual=manual.name, need=manual.approvals, self=manual.self_approval)
        if roles:
            for gate in roles:
                for role in gate.roles:
                    if "|" in role:
                        raise ValidationError(f"{gate.name}: role names may not contain '|', got {role!r}")
            step["roles"] = [[g.name, "|" + "|".join(g.roles) + "|", ", ".join(g.roles)] for g in roles]
        if timed:
            longest = max(timed, key=lambda g: g.after or timedelta(0))
            wait = longest.after or timedelta(0)
            step["after"] = [wait // timedelta(microseconds=1), longest.name, span_text(wait)]
        details[str(number)] = step
        parts.append(f"{source.value}:{number}")
    return ("|" + "|".join(parts) + "|" if parts else "|"), details


def compile_all(rules: Rules, gates: Sequence[Gate]) -> list[bytes | str]:
    """Every state's steps and gates, flat (target, steps, gates JSON or ''), for publish_rules.lua."""
    out: list[bytes | str] = []
    for target in LifecycleState:
        steps, details = compile_target(rules, gates, target)
        out += [target.value, steps, ENCODER.encode(details) if details else ""]
    return out


def _decode_rules(raw: bytes, version: int, key: str) -> RulesVersion:
    try:
        record = _RULES_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptDataError(f"key {key} field r:{version} cannot be decoded: {exc}") from None
    return msgspec.structs.replace(record, version=version)


class RulesPlans:
    """The published-rules half of ``GovernanceCore`` (a mixin): reading, publishing, following."""

    if TYPE_CHECKING:
        rules: Rules
        gates: tuple[Gate, ...]
        initial_state: LifecycleState
        require_telemetry: bool
        rules_version: int
        views: dict[str, GovernanceCore]
        core: Any
        policies: tuple[Any, ...]

        def now(self) -> datetime: ...
        def derive(self, parts: Any, version: int) -> GovernanceCore: ...

    # -- the definition -----------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """This Governance's own definition as the DSL's ``governance:`` mapping (govdefinition)."""
        return definition_of(rules=self.rules, gates=self.gates, policies=self.policies,
                             initial_state=self.initial_state, require_telemetry=self.require_telemetry)

    # -- reads ---------------------------------------------------------------------------

    def read_rules(self, scope: Scope, version: int | None = None) -> Call[tuple[int, RulesVersion | None]]:
        """(the scope's current rules version, 0 = none; the RulesVersion asked for, or None)."""
        wanted = "" if version is None else str(version)

        def parse(reply: Any) -> tuple[int, RulesVersion | None]:
            try:
                current = int(reply[0])
                raw = reply[1]
            except (IndexError, TypeError, ValueError) as exc:
                raise CorruptDataError(f"key {scope.rules}: unexpected reply {reply!r} ({exc!r})") from None
            if not raw:
                return current, None
            number = current if version is None else version
            record = _decode_rules(raw, number, scope.rules)
            return current, msgspec.structs.replace(record, tenant=scope.tenant, environment=scope.environment)

        return Call((scope.rules,), (wanted,), parse, "read_rules")

    def published_rules(self, *, tenant: str | None, environment: str | None,
                        version: int | None = None) -> Call[RulesVersion | None]:
        """The scope's published rules (``version``: that one; None: the current one), None when none."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValidationError(f"version must be a rules version number >= 1 or None, got {version!r}")
        call = self.read_rules(self.core.scope(tenant, environment), version)
        inner = call.parse

        def parse(reply: Any) -> RulesVersion | None:
            return inner(reply)[1]

        return Call(call.keys, call.args, parse, call.script)

    def rules_history(self, *, tenant: str | None, environment: str | None) -> Plan[list[RulesVersion]]:
        """Every published version of the scope's rules, oldest first (read in pages of HMGET)."""
        scope = self.core.scope(tenant, environment)
        current, _ = yield self.read_rules(scope, 0)
        out: list[RulesVersion] = []
        for start in range(1, current + 1, HISTORY_PAGE):
            numbers = list(range(start, min(current, start + HISTORY_PAGE - 1) + 1))
            raws = yield Call((scope.rules,), ("HMGET", scope.rules, *(f"r:{n}" for n in numbers)), lambda r: r)
            for number, raw in zip(numbers, raws, strict=True):
                if raw:
                    out.append(msgspec.structs.replace(_decode_rules(raw, number, scope.rules),
                                                       tenant=scope.tenant, environment=scope.environment))
        return out

    # -- publishing ------------------------------------------------------------------------

    def publish(self, *, actor: str, reason: str | None, tenant: str | None,
                environment: str | None) -> Call[RulesVersion]:
        """Store this Governance's definition as the scope's next rules version (one script call,
        publish_rules.lua); a definition equal to the current one writes nothing and returns it."""
        check_name(actor, "actor")
        if reason is not None and not isinstance(reason, str):
            raise ValidationError(f"reason must be a string or None, got {type(reason).__name__} {reason!r}")
        scope = self.core.scope(tenant, environment)
        definition = self.definition()
        digest = rules_hash(definition)
        record = RulesVersion(version=0, definition=definition, rules_hash=digest, created_at=self.now(),
                              created_by=actor, reason=reason, tenant=tenant, environment=environment)
        compiled = compile_all(self.rules, self.gates)
        ops_key, _ = self.core.ops(scope)

        def parse(reply: Any) -> RulesVersion:
            status, number = int(reply[0]), int(reply[1])
            if status == 0:  # equal to the current version: what is stored is the answer
                raise _Unchanged(number)
            return msgspec.structs.replace(record, version=number)

        return Call((scope.rules, scope.log, ops_key), (new_op(), digest, ENCODER.encode(record), *compiled), parse,
                    "publish_rules", scope=scope)

    # -- following -------------------------------------------------------------------------

    def cached_view(self, tenant: str | None, environment: str | None) -> GovernanceCore | None:
        """The GovernanceCore that governed this scope at the last look (None: not looked at yet)."""
        return self.views.get(self.core.scope(tenant, environment).tag)

    def adopt(self, scope: Scope, current: int, published: RulesVersion | None) -> GovernanceCore:
        """The GovernanceCore that governs ``scope`` at rules version ``current`` (remembered).

        Raises:
            RulesMismatchError: this Governance's own definition differs from the published one.
            ConfigError: the published definition names a policy kind this process does not know.
        """
        own: GovernanceCore = self  # type: ignore[assignment]
        if current == 0 or published is None:
            view = own
        else:
            mine = self.definition()
            if is_empty(mine):
                view = self.derive(parts_of(published.definition), current)
            elif rules_hash(mine) == published.rules_hash:
                view = self.derive(None, current)
            else:
                lines = differences(mine, published.definition)
                where = f"tenant {scope.tenant!r}, environment {scope.environment!r}"
                raise RulesMismatchError(
                    f"this Governance's rules differ from the rules published for {where} (version {current}); "
                    "nothing was written. Build it without rules, gates or policies to follow the published ones, "
                    "or publish this definition: " + "; ".join(lines or ["the definitions differ"]),
                    errors=lines)
        if len(self.views) > 4096:
            self.views.clear()
        self.views[scope.tag] = view
        return view

    def governing(self, tenant: str | None, environment: str | None, *, fresh: bool = False) -> Plan[GovernanceCore]:
        """The GovernanceCore governing the scope: remembered, or (``fresh``, or not known yet) read."""
        scope = self.core.scope(tenant, environment)
        if not fresh:
            known = self.views.get(scope.tag)
            if known is not None:
                return known
        current, published = yield self.read_rules(scope)
        return self.adopt(scope, current, published)

    def governed(self, tenant: str | None, environment: str | None,
                 make: Callable[[GovernanceCore], Call[T] | Plan[T]], *, fresh: bool = False) -> Plan[T]:
        """Run ``make(view)`` under the rules governing the scope; when the script says they changed
        underneath (RulesChangedError), read them again and decide again (RULES_ATTEMPTS times)."""
        for attempt in range(RULES_ATTEMPTS):
            view = yield from self.governing(tenant, environment, fresh=fresh or attempt > 0)
            step = make(view)
            try:
                if isinstance(step, Call):
                    result: T = yield step
                else:
                    result = yield from step
                return result
            except RulesChangedError:
                if attempt == RULES_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def publish_plan(self, *, actor: str, reason: str | None, tenant: str | None,
                     environment: str | None) -> Plan[RulesVersion]:
        """``publish`` as a plan: the write, then (when nothing changed) the current version read back."""
        call = self.publish(actor=actor, reason=reason, tenant=tenant, environment=environment)
        scope = self.core.scope(tenant, environment)
        try:
            result: RulesVersion = yield call
        except _Unchanged as same:
            _, current = yield self.read_rules(scope, same.version)
            if current is None:
                raise CorruptDataError(f"key {scope.rules} has no field r:{same.version}") from None
            result = current
        self.views.pop(scope.tag, None)
        return result


class _Unchanged(Exception):
    """publish_rules.lua found the definition equal to the current version (internal)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version

