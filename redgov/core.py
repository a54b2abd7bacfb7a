"""Sans-IO core shared by the sync and asyncio backplanes.

For each operation a method here validates the input and builds either one
``Call`` (a Lua script or a plain command, its keys and arguments, and how to
turn the reply or the refusal into a typed result) or a *plan*: a generator
that yields Calls (and ``ArchiveRead`` steps for the SQL copy) and receives
their results, for operations that take several round trips (a paged read, a
replay). The shells only run them::

    result = shell.run(core.get_state(...))          # one Call
    result = shell.drive(core.transitions(...))      # a plan

Every write carries an *operation id*, made once per logical call and sent
unchanged on every re-send (redgov's retries, a wrapped client's own Retry): the
script records it with the write's reply in the scope's ops bucket for a few
minutes, and a re-send answers with that reply instead of writing again.

Nothing in this module performs I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from .calls import Archive, ArchiveRead, Call, Plan, new_etag, new_ids, new_op, settle
from .codec import decode_state_hash, encode_record, state_fields, to_micros
from .errors import ConflictError, RedgovError, ValidationError
from .keys import ExperimentKeys, Scope, check_prefix
from .reads import PAGE_ENTRIES, PAGE_EXAMINE, Reads
from .records import (
    ENCODER,
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)
from .scripts import load_scripts
from .validate import check_etag, check_name, check_scope_part, check_version_number

# Call, Plan, ArchiveRead, settle, Archive and the id makers are defined in ``calls``; they are
# importable from here too, where the shells and the governance core have always found them.
__all__ = ["PAGE_ENTRIES", "PAGE_EXAMINE", "Archive", "ArchiveRead", "Call", "Core", "Plan", "new_etag", "new_ids",
           "new_op", "settle"]

T = TypeVar("T")

#: Every so many writes the ops bucket's expiry is set again even if this process set it already
#: (covers a bucket deleted and recreated within its minute).
EXPIRE_AGAIN_EVERY = 256


@lru_cache(maxsize=4096)
def _scope(prefix: str, tenant: str | None, environment: str | None) -> Scope:
    return Scope(prefix, tenant, environment)


def _expect(value: object, kind: type[Any], operation: str) -> None:
    if not isinstance(value, kind):
        raise ValidationError(f"{operation} takes a {kind.__name__}, got {type(value).__name__}")


class Core(Reads):
    """Builds the Calls and plans of every Backplane operation for one key prefix."""

    def __init__(self, prefix: str = "gov", *, optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None) -> None:
        self.prefix = check_prefix(prefix)
        self.optimistic_concurrency = optimistic_concurrency
        if retain_history is not None and (isinstance(retain_history, bool) or not isinstance(retain_history, int)
                                           or retain_history < 1):
            raise ValidationError("retain_history must be a positive number of entries or None, "
                                  f"got {retain_history!r}")
        #: history entries kept per experiment (None: everything)
        self.retain_history = retain_history
        self.retain = retain_history or 0
        #: reads history removed from Redis (None: removed history is gone from reads)
        self.archive = archive
        self.specs = load_scripts()
        self._expiring: set[str] = set()
        self._writes = 0
        self._lock = threading.Lock()
        #: scope tags whose ACL was checked (see Backplane.check_access)
        self.checked_scopes: set[str] = set()

    def __repr__(self) -> str:
        return f"Core(prefix={self.prefix!r}, retain_history={self.retain_history!r})"

    def scope(self, tenant: str | None, environment: str | None) -> Scope:
        check_scope_part(tenant, "tenant")
        check_scope_part(environment, "environment")
        return _scope(self.prefix, tenant, environment)

    def keys(self, experiment: str, tenant: str | None, environment: str | None) -> tuple[Scope, ExperimentKeys]:
        scope = self.scope(tenant, environment)
        return scope, scope.experiment(check_name(experiment, "experiment"))

    # -- the write envelope ---------------------------------------------------------

    def ops(self, scope: Scope) -> tuple[str, str]:
        """The scope's ops bucket now, and '1' when this process must set its expiry."""
        key = scope.ops()
        self._writes += 1
        if key in self._expiring and self._writes % EXPIRE_AGAIN_EVERY:
            return key, "0"
        return key, "1"

    def _applied(self, ops_key: str) -> None:
        with self._lock:
            if len(self._expiring) > 64:
                self._expiring.clear()
            self._expiring.add(ops_key)

    def write(self, script: str, scope: Scope, exp: ExperimentKeys, args: tuple[Any, ...],
              parse: Callable[[list[Any]], T], *, recover: Callable[[RedgovError], T] | None = None,
              extra_keys: tuple[str, ...] = (), lean: bool = False, op: str | None = None) -> Call[T]:
        """A write script's Call: the standard keys (1-4 only when ``lean``) then ``extra_keys``, the ops
        bucket's op id and expiry flag first in ARGV; ``parse`` gets the reply without its status."""
        ops_key, expire = self.ops(scope)
        keys = exp.write_keys(ops_key) + extra_keys if not lean else exp.standard[:3] + (ops_key,) + extra_keys
        self.specs[script].check_keys(len(keys))
        applied = self._applied

        def parse_reply(reply: Any) -> T:
            try:
                if expire == "1" and int(reply[0]) == 1:
                    applied(ops_key)
                return parse(reply)
            except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
                from .errors import CorruptDataError

                raise CorruptDataError(f"{script} on {exp.state}: the reply cannot be decoded: {exc!r}") from None

        return Call(keys, (op or new_op(), expire, *args), parse_reply, script, recover, exp.state, scope)

    # -- state ----------------------------------------------------------------------

    def get_state(self, experiment: str, tenant: str | None, environment: str | None) -> Call[ExperimentState | None]:
        _, exp = self.keys(experiment, tenant, environment)
        key = exp.state

        def parse(reply: Any) -> ExperimentState | None:
            return decode_state_hash(reply, key, experiment, tenant, environment)

        return Call((key,), ("HMGET", key, *state_fields()), parse)

    def save_state(self, state: ExperimentState, expected_etag: str | None) -> Call[SaveResult]:
        if not isinstance(state, ExperimentState):
            raise ValidationError(f"save_state takes an ExperimentState, got {type(state).__name__}"
                                  + ("; None comes from a get_state of an experiment that does not exist, or "
                                     "from the .state of a SaveResult whose save was refused (check .conflict: "
                                     "without an expected_etag save_state only creates)" if state is None else ""))
        check_etag(expected_etag)
        etag, op, _ = new_ids()
        state, record = encode_record(msgspec.structs.replace(state, etag=etag, revision=0))
        if state.last_modified_by is not None:
            check_name(state.last_modified_by, "last_modified_by")
        if state.config_version < 0:
            raise ValidationError(f"config_version must be >= 0, got {state.config_version}")
        scope, exp = self.keys(state.experiment, state.tenant, state.environment)
        mode = "overwrite" if not self.optimistic_concurrency else ("create" if expected_etag is None else "match")
        args = (state.experiment, mode, expected_etag or "", etag, state.state.value, state.config_version,
                to_micros(state.last_modified), state.last_modified_by or "", ENCODER.encode(state.metadata),
                self.retain, record)

        def parse(reply: list[Any]) -> SaveResult:
            stored = msgspec.structs.replace(state, revision=int(reply[1]))
            return SaveResult(ok=True, state=stored, etag=etag, conflict=False, error=None)

        def recover(error: RedgovError) -> SaveResult:
            if isinstance(error, ConflictError):
                return SaveResult(ok=False, state=None, etag=None, conflict=True, error=str(error))
            raise error

        return self.write("save_state", scope, exp, args, parse, recover=recover, op=op)

    # -- history appends --------------------------------------------------------------

    def append_transition(self, transition: StateTransition) -> Call[StateTransition]:
        _expect(transition, StateTransition, "append_transition")
        transition, record = encode_record(msgspec.structs.replace(transition, revision=0, etag=""))
        check_name(transition.transition_id, "transition_id")
        scope, exp = self.keys(transition.experiment, transition.tenant, transition.environment)
        args = (transition.experiment, transition.transition_id, self.retain, record)
        return self.write("append_transition", scope, exp, args, lambda _reply: transition)

    def append_approval(self, approval: ApprovalRecord) -> Call[ApprovalRecord]:
        _expect(approval, ApprovalRecord, "append_approval")
        approval, record = encode_record(approval)
        if approval.transition_id is not None:
            check_name(approval.transition_id, "transition_id")
        scope, exp = self.keys(approval.experiment, approval.tenant, approval.environment)
        args = (approval.experiment, approval.transition_id or "", self.retain, record)
        return self.write("append_approval", scope, exp, args, lambda _reply: approval)

    def append_version(self, version: ConfigurationVersion) -> Call[ConfigurationVersion]:
        _expect(version, ConfigurationVersion, "append_version")
        check_version_number(version.version, "version number")
        version, record = encode_record(version)
        scope, exp = self.keys(version.experiment, version.tenant, version.environment)
        args = (version.experiment, version.version, self.retain, record)
        return self.write("append_version", scope, exp, args, lambda _reply: version)

    def append_policy_evaluation(self, evaluation: PolicyEvaluation) -> Call[PolicyEvaluation]:
        _expect(evaluation, PolicyEvaluation, "append_policy_evaluation")
        evaluation, record = encode_record(evaluation)
        check_name(evaluation.policy, "policy")
        scope, exp = self.keys(evaluation.experiment, evaluation.tenant, evaluation.environment)
        args = (evaluation.experiment, evaluation.policy, self.retain, record)
        return self.write("append_policy_evaluation", scope, exp, args, lambda _reply: evaluation)
