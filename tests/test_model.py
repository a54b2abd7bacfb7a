"""Model-based test: random Backplane operations against a pure-Python model.

A hypothesis ``RuleBasedStateMachine`` applies the same random operations to a
Backplane and to a model made of dicts and lists, over a few tricky experiment
names and scopes. After every step it compares every read of the slot the step
touched; every 3rd step the state of every slot, every 10th step every list of
every slot and every transition link (a write that lands in the wrong slot).
Invariants: the revision goes up by exactly one per write (so strictly), an
etag never repeats for an experiment, history only grows. It runs on
``memory://`` (many examples) and on the real Redis (fewer).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from msgspec.structs import replace

import redgov
from redgov import (
    ApprovalRecord,
    ConfigurationVersion,
    ConflictError,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
    ValidationError,
)
from redgov.validate import hidden_char

from .conftest import delete_prefix

# Hypothesis stops shrinking after 5 minutes on its own; let it report before
# pytest-timeout (300 s in pyproject) would cut a failing run off mid-shrink.
pytestmark = pytest.mark.timeout(600)

# "{x}" and "%7Bx%7D" collide if '%' is not escaped; ":" and "{}" break key layouts.
EXPERIMENTS = ("a:b", "{x}", "%7Bx%7D", "ü n")
# None, "" and "t" are three different tenants; environment None vs "" too.
SCOPES: tuple[tuple[str | None, str | None], ...] = ((None, None), ("", None), ("t", ""))
POLICIES = ("traffic", "err:rate", "{p} ü")
TRICKY_TIDS = ("t:1", "{tid}", "~", "ü")

Key = tuple[tuple[str | None, str | None], str]

# -- strategies -------------------------------------------------------------------

experiments = st.sampled_from(EXPERIMENTS)
scopes = st.sampled_from(SCOPES)
# None: the slot the previous step touched (locality, so one slot sees long histories)
places = st.none() | st.tuples(scopes, experiments)
lifecycle = st.sampled_from(list(LifecycleState))
maybe_lifecycle = st.none() | lifecycle
short_text = st.text(max_size=8)
# names: no control, format, invisible or unassigned characters, not blank (refused with a ValidationError)
maybe_name = st.none() | st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp")),
                                 min_size=1, max_size=8).filter(lambda s: not s.isspace() and hidden_char(s) is None)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text
)
# Fixed key names (optional ones) instead of st.dictionaries: no unique-key filter to
# retry, so failing cases shrink quickly. The names are awkward on purpose.
KEY_NAMES = ("counter", "a:b", "{k}", "", "ü n", "0")
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=3)
    | st.fixed_dictionaries({}, optional={k: json_scalars for k in KEY_NAMES[:3]})
)
metadata = st.fixed_dictionaries({}, optional={k: json_values for k in KEY_NAMES})
times = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2300, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3, minutes=-30)), timezone(timedelta(hours=14))]),
)


# -- the model ------------------------------------------------------------------------


@dataclass
class Slot:
    """Everything the model knows about one (scope, experiment)."""

    state: ExperimentState | None = None  # what get_state must return
    revision: int = 0
    etags: list[str] = field(default_factory=list)  # every etag it ever had, in order
    writes: list[ExperimentState] = field(default_factory=list)
    transitions: list[StateTransition] = field(default_factory=list)
    approvals: list[ApprovalRecord] = field(default_factory=list)
    versions: dict[int, ConfigurationVersion] = field(default_factory=dict)
    policies: list[PolicyEvaluation] = field(default_factory=list)
    latest_policy: dict[str, PolicyEvaluation] = field(default_factory=dict)


@dataclass
class Seen:
    """What the backplane returned last time, for the "only grows" invariant."""

    revision: int = 0
    lists: dict[str, list[Any]] = field(default_factory=dict)


class BackplaneMachine(RuleBasedStateMachine):
    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self.prefix = "m" + uuid.uuid4().hex[:12]
        self.bp = redgov.connect(url, prefix=self.prefix)
        self.slots: dict[Key, Slot] = {(s, e): Slot() for s in SCOPES for e in EXPERIMENTS}
        # per scope: transition id -> approvals linked to it (any experiment of the scope)
        self.linked: dict[tuple[str | None, str | None], dict[str, list[ApprovalRecord]]] = {s: {} for s in SCOPES}
        self.seen: dict[Key, Seen] = {k: Seen() for k in self.slots}
        self.steps = 0
        self.last: Key = (SCOPES[0], EXPERIMENTS[0])

    def teardown(self) -> None:
        try:
            if not self.url.startswith("memory://"):
                delete_prefix(self.bp.client, self.prefix)
        finally:
            self.bp.close()

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _scope_kw(scope: tuple[str | None, str | None]) -> dict[str, str | None]:
        return {"tenant": scope[0], "environment": scope[1]}

    def _state(self, scope: tuple[str | None, str | None], experiment: str, state: LifecycleState,
               config_version: int, by: str | None, when: datetime, meta: dict[str, Any]) -> ExperimentState:
        return ExperimentState(
            experiment=experiment, state=state, config_version=config_version, last_modified=when,
            last_modified_by=by, metadata=meta, etag="ignored-on-write", revision=12345,
            tenant=scope[0], environment=scope[1],
        )

    def _expect_saved(self, key: Key, sent: ExperimentState, result: redgov.SaveResult) -> None:
        slot = self.slots[key]
        assert result.ok, result
        assert not result.conflict and result.error is None
        assert result.state is not None and result.etag
        assert result.state.etag == result.etag
        # the revision goes up by exactly one per write; the etag is new for this experiment
        assert result.state.revision == slot.revision + 1
        assert result.etag not in slot.etags, "etag reused for the same experiment"
        expected = ExperimentState(
            experiment=sent.experiment, state=sent.state, config_version=sent.config_version,
            last_modified=sent.last_modified.astimezone(UTC), last_modified_by=sent.last_modified_by,
            etag=result.etag, revision=slot.revision + 1, metadata=sent.metadata,
            tenant=sent.tenant, environment=sent.environment,
        )
        assert result.state == expected
        slot.revision += 1
        slot.etags.append(result.etag)
        slot.state = expected
        slot.writes.append(expected)

    def _expect_conflict(self, result: redgov.SaveResult) -> None:
        assert not result.ok, f"expected a conflict, got {result!r}"
        assert result.conflict and result.state is None and result.etag is None
        assert result.error

    def _grows(self, key: Key, name: str, now: list[Any]) -> None:
        before = self.seen[key].lists.get(name, [])
        assert now[: len(before)] == before, f"{name} of {key} lost or changed history"
        assert len(now) >= len(before)
        self.seen[key].lists[name] = list(now)

    def _where(self, where: Key | None) -> Key:
        if where is not None:
            self.last = where
        return self.last

    def _check(self, key: Key, *, deep: bool = True) -> None:
        """Every read of one slot equals the model (``deep=False``: whole lists only)."""
        scope, experiment = key
        kw = self._scope_kw(scope)
        slot = self.slots[key]
        bp = self.bp

        got = bp.get_state(experiment, **kw)
        assert got == slot.state
        if got is not None:
            assert got.revision > 0 and got.etag == slot.etags[-1]
            assert got.revision >= self.seen[key].revision
            self.seen[key].revision = got.revision

        writes = bp.state_writes(experiment, **kw)
        assert writes == slot.writes
        assert [w.revision for w in writes] == list(range(1, len(writes) + 1))
        assert len({w.etag for w in writes}) == len(writes)
        self._grows(key, "state_writes", writes)

        transitions = bp.transitions(experiment, **kw)
        assert transitions == slot.transitions
        self._grows(key, "transitions", transitions)

        approvals = bp.approvals(experiment, **kw)
        assert approvals == slot.approvals
        self._grows(key, "approvals", approvals)

        versions = bp.versions(experiment, **kw)
        assert versions == [slot.versions[n] for n in sorted(slot.versions)]
        before = self.seen[key].lists.get("versions", [])
        assert all(v in versions for v in before), f"versions of {key} lost or changed history"
        self.seen[key].lists["versions"] = list(versions)
        assert bp.latest_version(experiment, **kw) == (slot.versions[max(slot.versions)] if slot.versions else None)

        evaluations = bp.policy_evaluations(experiment, **kw)
        assert evaluations == slot.policies
        self._grows(key, "policy_evaluations", evaluations)
        if not deep:
            return
        # version(n): the lowest and highest taken, a hole, the next free one, 0
        top = max(slot.versions, default=0)
        holes = [n for n in range(1, top) if n not in slot.versions][:1]
        for number in {0, top + 1, min(slot.versions, default=1), top, *holes}:
            assert bp.version(experiment, number, **kw) == slot.versions.get(number), number
        for policy in POLICIES:
            assert bp.latest_policy_evaluation(experiment, policy, **kw) == slot.latest_policy.get(policy), policy

    def _check_linked(self, scope: tuple[str | None, str | None], tids: set[str]) -> None:
        kw = self._scope_kw(scope)
        for tid in sorted(tids | {"never-linked"}):
            got = self.bp.approvals_for_transition(tid, **kw)
            assert got == self.linked[scope].get(tid, []), tid

    def _tids(self, scope: tuple[str | None, str | None]) -> set[str]:
        return {t.transition_id for (s, _), slot in self.slots.items() if s == scope for t in slot.transitions}

    # -- save_state ---------------------------------------------------------------------

    @initialize(state=lifecycle, by=maybe_name, when=times, meta=metadata)
    def start(self, state: LifecycleState, by: str | None, when: datetime, meta: dict[str, Any]) -> None:
        # one slot starts out existing, so guarded and stale saves meet a real etag early
        key = self.last
        sent = self._state(key[0], key[1], state, 0, by, when, meta)
        self._expect_saved(key, sent, self.bp.save_state(sent))
        self._check(key)

    @rule(where=places, state=lifecycle, config_version=st.integers(0, 50),
          by=maybe_name, when=times, meta=metadata)
    def save_create(self, where: Key | None, state: LifecycleState, config_version: int,
                    by: str | None, when: datetime, meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        sent = self._state(scope, experiment, state, config_version, by, when, meta)
        result = self.bp.save_state(sent)  # expected_etag=None: create only
        if self.slots[key].state is None:
            event("save_state create: created")
            self._expect_saved(key, sent, result)
        else:
            event("save_state create: conflict (exists)")
            self._expect_conflict(result)
        self._check(key)

    @rule(where=places, state=lifecycle, config_version=st.integers(0, 50),
          by=maybe_name, when=times, meta=metadata)
    def save_guarded(self, where: Key | None, state: LifecycleState, config_version: int,
                     by: str | None, when: datetime, meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        current = self.slots[key].state
        sent = self._state(scope, experiment, state, config_version, by, when, meta)
        if current is None:
            # no state yet: any etag is wrong
            event("save_state guarded: conflict (no state)")
            self._expect_conflict(self.bp.save_state(sent, expected_etag=uuid.uuid4().hex))
        else:
            event("save_state guarded: saved")
            self._expect_saved(key, sent, self.bp.save_state(sent, expected_etag=current.etag))
        self._check(key)

    @rule(where=places, which=st.sampled_from(["old", "other", "random"]),
          pick=st.integers(0, 1000), state=lifecycle, meta=metadata)
    def save_stale(self, where: Key | None, which: str, pick: int, state: LifecycleState,
                   meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        slot = self.slots[key]
        if which == "old" and slot.state is not None:
            # a writer that read before someone else saved: move the etag on, then use the old one
            bumped = replace(slot.state, metadata={"bumped": pick})
            self._expect_saved(key, bumped, self.bp.save_state(bumped, expected_etag=slot.state.etag))
            candidates = slot.etags[:-1]
        elif which == "old":
            candidates = []
        elif which == "other":  # another experiment's (or scope's) current etag
            candidates = [s.etags[-1] for k, s in self.slots.items() if k != key and s.etags]
        else:
            candidates = []
        etag = candidates[pick % len(candidates)] if candidates else uuid.uuid4().hex[:24]
        event(f"save_state stale: {which if candidates else 'random'} etag")
        sent = self._state(scope, experiment, state, 0, None, datetime.now(UTC), meta)
        self._expect_conflict(self.bp.save_state(sent, expected_etag=etag))
        self._check(key)

    # -- history ---------------------------------------------------------------------

    @rule(where=places, from_state=maybe_lifecycle, to_state=lifecycle,
          tid=st.sampled_from(["fresh", "fresh", "tricky", "duplicate"]), pick=st.integers(0, 1000),
          actor=maybe_name, reason=maybe_name, when=times, meta=metadata)
    def append_transition(self, where: Key | None, from_state: LifecycleState | None,
                          to_state: LifecycleState, tid: str, pick: int, actor: str | None,
                          reason: str | None, when: datetime, meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        known = self._tids(scope)
        if tid == "tricky":
            transition_id = TRICKY_TIDS[pick % len(TRICKY_TIDS)]
        elif tid == "duplicate" and known:
            transition_id = sorted(known)[pick % len(known)]
        else:
            transition_id = uuid.uuid4().hex
        record = StateTransition(
            transition_id=transition_id, experiment=experiment, from_state=from_state, to_state=to_state,
            timestamp=when, actor=actor, reason=reason, metadata=meta, tenant=scope[0], environment=scope[1],
        )
        if transition_id in known:
            # transition ids are unique in a scope: refused, nothing written
            event("append_transition: duplicate id refused")
            with pytest.raises(ConflictError):
                self.bp.append_transition(record)
        else:
            event("append_transition: appended")
            assert self.bp.append_transition(record) == record
            self.slots[key].transitions.append(record)
        self._check(key)

    @rule(where=places, link=st.sampled_from(["none", "known", "unknown"]),
          pick=st.integers(0, 1000), from_state=maybe_lifecycle, to_state=lifecycle, approved=st.booleans(),
          approver=maybe_name, gate=short_text, when=times, meta=metadata)
    def append_approval(self, where: Key | None, link: str, pick: int,
                        from_state: LifecycleState | None, to_state: LifecycleState, approved: bool,
                        approver: str | None, gate: str, when: datetime, meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        known = sorted(self._tids(scope))
        if link == "known" and known:
            transition_id: str | None = known[pick % len(known)]
        elif link == "unknown":  # linking to a transition not (yet) recorded is allowed
            transition_id = ("later:" + TRICKY_TIDS[pick % len(TRICKY_TIDS)]) if pick % 2 else uuid.uuid4().hex
        else:
            transition_id = None
        record = ApprovalRecord(
            experiment=experiment, transition_id=transition_id, from_state=from_state, to_state=to_state,
            approved=approved, approver=approver, reason=None, timestamp=when, gate=gate, metadata=meta,
            tenant=scope[0], environment=scope[1],
        )
        event(f"append_approval: {'unlinked' if transition_id is None else 'linked'}")
        assert self.bp.append_approval(record) == record
        self.slots[key].approvals.append(record)
        if transition_id is not None:
            self.linked[scope].setdefault(transition_id, []).append(record)
        self._check(key)
        # the link just written, one that exists without this approval, one never made
        probe = set(sorted(tid for tid in self.linked[scope] if tid != transition_id)[:1])
        if transition_id is not None:
            probe.add(transition_id)
        self._check_linked(scope, probe)

    @rule(where=places,
          kind=st.sampled_from(["next", "next", "duplicate", "new", "invalid"]), pick=st.integers(0, 1000),
          configuration=metadata, rollback=st.booleans(),
          lifecycle_state=maybe_lifecycle, when=times, meta=metadata)
    def append_version(self, where: Key | None, kind: str, pick: int, configuration: dict[str, Any],
                       rollback: bool, lifecycle_state: LifecycleState | None, when: datetime,
                       meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        slot = self.slots[key]
        if kind == "duplicate" and not slot.versions:
            # something to duplicate first: version 1 + pick % 4, leaving holes below it
            first = ConfigurationVersion(experiment=experiment, version=1 + pick % 4, configuration={"first": True},
                                         tenant=scope[0], environment=scope[1])
            assert self.bp.append_version(first) == first
            slot.versions[first.version] = first
        top = max(slot.versions, default=0)
        if kind == "duplicate":
            number = sorted(slot.versions)[pick % len(slot.versions)]
        elif kind == "new":  # a number not taken yet: a hole below the top, or a gap above it
            holes = [n for n in range(1, top) if n not in slot.versions]
            number = holes[pick % len(holes)] if holes and pick % 2 else top + 1 + pick % 4
        elif kind == "invalid":
            number = -(pick % 3)  # 0, -1, -2
        else:
            number = top + 1
        record = ConfigurationVersion(
            experiment=experiment, version=number, configuration=configuration,
            configuration_hash=uuid.uuid4().hex, created_at=when, created_by=None, description="d:{v}",
            lifecycle_state=lifecycle_state, is_rollback=rollback,
            rolled_back_from=(top or None) if rollback else None, metadata=meta,
            tenant=scope[0], environment=scope[1],
        )
        if number < 1:
            event("append_version: invalid number refused")
            with pytest.raises(ValidationError):  # refused before anything is written
                self.bp.append_version(record)
        elif number in slot.versions:
            # history is append-only: a duplicate number is refused
            event("append_version: duplicate refused")
            with pytest.raises(ConflictError):
                self.bp.append_version(record)
        else:
            event("append_version: " + ("appended below the top" if number < top else "appended"))
            assert self.bp.append_version(record) == record
            slot.versions[number] = record
        self._check(key)

    @rule(where=places, policy=st.sampled_from(POLICIES), compliant=st.booleans(),
          severity=st.sampled_from(list(Severity)), current=maybe_lifecycle, target_state=maybe_lifecycle,
          reason=maybe_name, when=times, meta=metadata)
    def append_policy_evaluation(self, where: Key | None, policy: str, compliant: bool,
                                 severity: Severity, current: LifecycleState | None,
                                 target_state: LifecycleState | None, reason: str | None, when: datetime,
                                 meta: dict[str, Any]) -> None:
        key = self._where(where)
        scope, experiment = key
        record = PolicyEvaluation(
            experiment=experiment, policy=policy, compliant=compliant, severity=severity, reason=reason,
            timestamp=when, current_state=current, target_state=target_state, metadata=meta,
            tenant=scope[0], environment=scope[1],
        )
        assert self.bp.append_policy_evaluation(record) == record
        slot = self.slots[key]
        slot.policies.append(record)
        slot.latest_policy[policy] = record
        self._check(key)

    # -- invariants over every slot (cheap: one round trip each) --------------------------

    @invariant()
    def every_state_matches(self) -> None:
        # every 3rd step (each costs a round trip per slot; the touched slot is checked anyway)
        self.steps += 1
        if self.steps % 3:
            return
        for (scope, experiment), slot in self.slots.items():
            got = self.bp.get_state(experiment, **self._scope_kw(scope))
            assert got == slot.state, (scope, experiment)
            seen = self.seen[(scope, experiment)]
            if got is not None:
                assert got.revision >= seen.revision  # never goes back
                seen.revision = got.revision

    @invariant()
    def full_sweep_now_and_then(self) -> None:
        # every slot's lists and every link, every 10th step: catches a write landing in the
        # wrong slot (the slot a step touches is checked in full by the step itself)
        if self.steps % 10:
            return
        for key in self.slots:
            self._check(key, deep=False)
        for scope in SCOPES:
            self._check_linked(scope, self._tids(scope) | set(self.linked[scope]))


# -- memory:// : the TestCase hypothesis generates -----------------------------------------


class MemoryBackplaneMachine(BackplaneMachine):
    def __init__(self) -> None:
        super().__init__("memory://")


TestBackplaneModelMemory = MemoryBackplaneMachine.TestCase
# report_multiple_bugs=False: shrink one failure only, so a failing run ends well
# inside pytest's timeout instead of shrinking every distinct failure for minutes.
# No explain phase either: it replays the failure hundreds of times for comments.
COMMON = settings(deadline=None, stateful_step_count=30, report_multiple_bugs=False,
                  phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                  suppress_health_check=[HealthCheck.too_slow])
TestBackplaneModelMemory.settings = settings(COMMON, max_examples=50)


# -- the real Redis: same machine, fewer examples ---------------------------------------


def test_backplane_model_real_redis(redis_url: str) -> None:
    """The same machine against the conftest server (which may be a private one)."""

    class RedisBackplaneMachine(BackplaneMachine):
        def __init__(self) -> None:
            super().__init__(redis_url)

    run_state_machine_as_test(RedisBackplaneMachine, settings=settings(COMMON, max_examples=15))
