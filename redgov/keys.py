"""The key schema: the only module that formats a Redis key.

Every key begins with the installation's prefix, literally, followed by the
scope's Redis Cluster hash tag, so ``ACL SETUSER ... ~<prefix>*`` and
``SCAN MATCH <prefix>*`` cover one installation, and every key of one scope
(prefix, tenant, environment) lives in one hash slot::

    <prefix>{<tenant>:<environment>}:<suffix>

The prefix may not contain ``{`` or ``}`` (the first ``{`` ends it). Tenant,
environment, experiment names and idempotency keys are percent-encoded for
``{ } : % ~`` and ``None`` is written as a bare ``~``. An encoded part never
contains ``{``, ``}`` or ``:`` and never equals ``~``, so the encoding is
injective: two distinct (prefix, tenant, environment, experiment) tuples never
share a key.

``{T}`` below is ``<prefix>{<tenant>:<environment>}``; ``<exp>`` an encoded name.

| key                     | type   | holds                                                               |
|-------------------------|--------|---------------------------------------------------------------------|
| ``{T}:log``             | stream | every event of the scope, in order (the truth; watched, exported)   |
| ``{T}:index``           | zset   | the scope's experiment names (score 0: read in name order, in pages)|
| ``{T}:links``           | hash   | ``t:<transition id>`` -> linked approval entry ids (space-separated); |
|                         |        | ``a:<approval entry id>`` -> id of the transition that consumed it; |
|                         |        | ``x:<transition id>`` -> entry id of a transition without a state   |
|                         |        | write (create's, appended ones: their ids are unique per scope)     |
| ``{T}:ops:<minute>``    | hash   | operation id -> first reply of that write (expires: re-send dedupe) |
| ``{T}:rules``           | hash   | the scope's published rules (govrules.py): ``n`` current version,   |
|                         |        | ``h`` its hash, ``r:<n>`` each version's RulesVersion (kept: every  |
|                         |        | version is history; one per publish), ``s:<to>``/``d:<to>`` the     |
|                         |        | current version's steps and gates into each state (lib/gates.lua)   |
| ``{T}:s:<exp>``         | hash   | current state ``s v t b m e r``; open approvals ``p:<from>><to>``,  |
|                         |        | requests ``q:<from>><to>`` / ``q:<from>>*`` and ``pn``, ``lv``     |
|                         |        | (lua/lib/history.lua says their format); ``es``/``rs``              |
|                         |        | when it entered its state / last entered Running or Ramping (µs);   |
|                         |        | ``lt`` the last lease fencing token                                 |
| ``{T}:h:<exp>``         | list   | ``<code><entry id>`` of every entry of the experiment, in order     |
|                         |        | (codes: S state, T/t transition with/without a state write,         |
|                         |        | A approval, V/v version with/without, P policy evaluation)          |
| ``{T}:a:<exp>``         | list   | entry ids of its approvals                                          |
| ``{T}:p:<exp>``         | list   | entry ids of its policy evaluations                                 |
| ``{T}:v:<exp>``         | zset   | entry ids of its configuration versions, scored by number           |
| ``{T}:l:<exp>``         | hash   | policy name -> entry id of its latest evaluation                    |
| ``{T}:b:<exp>``         | hash   | retention: the state at the cut (where replay starts), entries      |
|                         |        | removed per list, the last removed entry id                         |
| ``{T}:i:<exp>:<key>``   | string | an idempotency key's first outcome (expires)                        |
| ``{T}:k:<exp>``         | string | the experiment's lease: fencing token and owner (expires with it)  |
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from .errors import ValidationError

__all__ = ["ExperimentKeys", "Scope", "check_prefix", "decode_part", "encode_part", "parse_log_key",
           "scope_pattern"]

_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A", "~": "%7E"}
_SPECIAL = re.compile("[%{}:~]")
_ENCODED = re.compile("%(25|7B|7D|3A|7E)")
_UNESCAPE = {v: k for k, v in _ESCAPES.items()}
_NONE = "~"
_GLOB = frozenset("*?[]\\")
#: Seconds per bucket of the re-send dedupe hashes (``{T}:ops:<minute>``).
OPS_BUCKET_SECONDS = 60


def encode_part(value: str | None) -> str:
    """Encode one key component; ``None`` and ``""`` stay distinct."""
    if value is None:
        return _NONE
    if _SPECIAL.search(value) is None:
        return value
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], value)


def decode_part(text: str) -> str | None:
    """The component ``encode_part`` made ``text`` from."""
    if text == _NONE:
        return None
    return _ENCODED.sub(lambda m: _UNESCAPE["%" + m.group(1)], text)


def check_prefix(prefix: object) -> str:
    """A valid key prefix: a non-empty string without ``{`` or ``}`` (ValidationError otherwise)."""
    if not isinstance(prefix, str):
        raise ValidationError(f"prefix must be a string, got {type(prefix).__name__} {prefix!r}")
    if not prefix:
        raise ValidationError("prefix must not be empty")
    if "{" in prefix or "}" in prefix:
        raise ValidationError(f"prefix {prefix!r} may not contain '{{' or '}}': keys are <prefix>{{<scope>}}:..., "
                              "and the scope's braces are the Redis Cluster hash tag")
    if len(prefix) > 256:
        raise ValidationError(f"prefix is {len(prefix)} characters long; the limit is 256")
    if any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise ValidationError(f"prefix {prefix!r} contains a control character")
    return prefix


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in _GLOB else c for c in text)


def scope_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for the log stream of every scope under prefix (and no other prefix)."""
    return glob_escape(prefix) + "{*:*}:log"


def prefix_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every key of prefix (and no other prefix)."""
    return glob_escape(prefix) + "{*"


def web_session(prefix: str, sid: str) -> str:
    """The key of one ``redgov serve`` login (a string ``<user> <fingerprint>`` that expires with
    the login). Its tag ``{web}`` has no ``:``, so it is no scope's key and no scope SCAN meets it."""
    return f"{prefix}{{web}}:session:{sid}"


def parse_log_key(key: str) -> tuple[str, str | None, str | None]:
    """(prefix, tenant, environment) of a ``{T}:log`` key."""
    brace = key.find("{")
    if brace < 1 or not key.endswith("}:log"):
        raise ValueError(f"not a redgov log key: {key!r}")
    parts = key[brace + 1:-5].split(":")
    if len(parts) != 2 or "{" in key[brace + 1:-5] or "}" in key[brace + 1:-5]:
        raise ValueError(f"not a redgov log key: {key!r}")
    return key[:brace], decode_part(parts[0]), decode_part(parts[1])


def scope_logs(raw_keys: Iterable[Any], prefix: str) -> Iterator[str]:
    """The scope log keys of ``prefix`` among SCAN results (bytes or str), each once as listed; a
    key that is not UTF-8 or only looks like a scope log (another prefix) is passed over."""
    for raw in raw_keys:
        try:
            key = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            if parse_log_key(key)[0] == prefix:
                yield key
        except ValueError:  # UnicodeDecodeError is a ValueError too
            continue


class Scope:
    """The key space of one (``prefix``, ``tenant``, ``environment``); key names computed once.

    ``tag`` is ``<prefix>{<tenant>:<environment>}``, the start of every key of the scope
    (one Cluster hash slot); ``log``, ``index``, ``links`` and ``rules`` are the scope's keys.
    """

    __slots__ = ("_bucket", "environment", "index", "links", "log", "prefix", "rules", "state_prefix", "tag",
                 "tenant")

    def __init__(self, prefix: str, tenant: str | None = None, environment: str | None = None) -> None:
        self.prefix = prefix
        self.tenant = tenant
        self.environment = environment
        self.tag = "%s{%s:%s}" % (prefix, encode_part(tenant), encode_part(environment))
        self.log = self.tag + ":log"
        self.index = self.tag + ":index"
        self.links = self.tag + ":links"
        #: the scope's published rules (a hash; govrules.py)
        self.rules = self.tag + ":rules"
        #: every state hash of the scope starts with this (client-side caching tracks it)
        self.state_prefix = self.tag + ":s:"
        self._bucket: tuple[int, str] = (-1, "")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.tag == other.tag

    def __hash__(self) -> int:
        return hash(self.tag)

    def __repr__(self) -> str:
        return f"Scope(prefix={self.prefix!r}, tenant={self.tenant!r}, environment={self.environment!r})"

    def ops(self, now: float | None = None) -> str:
        """The re-send dedupe hash of the current minute (by this process's clock)."""
        minute = int((time.time() if now is None else now) // OPS_BUCKET_SECONDS)
        bucket = self._bucket
        if bucket[0] != minute:
            bucket = self._bucket = (minute, f"{self.tag}:ops:{minute}")
        return bucket[1]

    def experiment(self, name: str) -> ExperimentKeys:
        """The keys of one experiment of this scope (cached)."""
        return _experiment_keys(self.tag, name)


class ExperimentKeys:
    """The keys of one experiment in a scope.

    ``standard`` holds the keys every per-experiment write script takes, in its
    order (lua/lib/history.lua): state, log, history, approvals, policies,
    versions, latest, base, links, index; the scope's ops bucket is inserted
    after history (4th).
    """

    __slots__ = ("approvals", "base", "encoded", "history", "index", "latest", "links", "log", "policies",
                 "standard", "state", "tag", "versions")

    def __init__(self, tag: str, name: str) -> None:
        self.tag = tag
        self.encoded = encoded = encode_part(name)
        self.state = f"{tag}:s:{encoded}"
        self.log = tag + ":log"
        self.history = f"{tag}:h:{encoded}"
        self.approvals = f"{tag}:a:{encoded}"
        self.policies = f"{tag}:p:{encoded}"
        self.versions = f"{tag}:v:{encoded}"
        self.latest = f"{tag}:l:{encoded}"
        self.base = f"{tag}:b:{encoded}"
        self.index = tag + ":index"
        self.links = tag + ":links"
        self.standard: tuple[str, ...] = (self.state, self.log, self.history, self.approvals, self.policies,
                                          self.versions, self.latest, self.base, self.links, self.index)

    def write_keys(self, ops: str) -> tuple[str, ...]:
        """The keys every write script takes, in their order: ``standard`` with the scope's ops
        bucket ``ops`` (re-send dedupe) inserted 4th."""
        return self.standard[:3] + (ops,) + self.standard[3:]

    def idempotency(self, key: str) -> str:
        """The key of one idempotency key's record."""
        return f"{self.tag}:i:{self.encoded}:{encode_part(key)}"

    def lease(self) -> str:
        """The experiment's lease: a string ``<token> <owner>`` set with PXAT (it expires with the lease)."""
        return f"{self.tag}:k:{self.encoded}"


@lru_cache(maxsize=8192)
def _experiment_keys(tag: str, name: str) -> ExperimentKeys:
    return ExperimentKeys(tag, name)
