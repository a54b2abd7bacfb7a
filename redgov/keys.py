"""The key schema: the only module that formats a Redis key.

Every key of one scope (prefix, tenant, environment) starts with the same
Redis Cluster hash tag, so one script can touch all of them, even on a
Cluster::

    {<prefix>:<tenant>:<environment>}:<suffix>

Each component is percent-encoded for ``{ } : % ~`` and ``None`` is written
as a bare ``~``. An encoded string never contains ``{``, ``}`` or ``:`` and
never equals ``~``, so the encoding is injective: two distinct
(prefix, tenant, environment, experiment) tuples never share a key. The
experiment name and transition ids are encoded the same way.

| key                                  | type   | holds                                            |
|--------------------------------------|--------|--------------------------------------------------|
| ``{T}:log``                          | stream | every event of the scope, in order (the truth)   |
| ``{T}:index``                        | hash   | experiment name -> current state name            |
| ``{T}:tid``                          | hash   | transition id -> log entry id                    |
| ``{T}:x:<exp>:state``                | hash   | current state: s v t b m e r fields              |
| ``{T}:x:<exp>:states``               | list   | log ids of the experiment's state writes         |
| ``{T}:x:<exp>:transitions``          | list   | log ids of its transitions                       |
| ``{T}:x:<exp>:approvals``            | list   | log ids of its approvals                         |
| ``{T}:x:<exp>:versions``             | zset   | log ids of its versions, scored by number        |
| ``{T}:x:<exp>:policies``             | list   | log ids of its policy evaluations                |
| ``{T}:x:<exp>:policy``               | hash   | policy name -> log id of its latest evaluation   |
| ``{T}:x:<exp>:pending``              | hash   | '<from>><to>' -> log id of an unused approval    |
| ``{T}:x:<exp>:links``                | hash   | approval log id -> transition id that used it    |
| ``{T}:tr:<transition id>:approvals`` | list   | log ids of the approvals linked to a transition  |
| ``{T}:x:<exp>:idem:<key>``          | string | '<target>|<log id>' of the transition a key made |
"""

from __future__ import annotations

import re

__all__ = ["Scope", "encode_part", "decode_part", "scope_pattern"]

_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A", "~": "%7E"}
_SPECIAL = re.compile("[%{}:~]")
_NONE = "~"


def encode_part(value: str | None) -> str:
    """Encode one key component; ``None`` and ``""`` stay distinct."""
    if value is None:
        return _NONE
    if _SPECIAL.search(value) is None:
        return value
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], value)


def decode_part(text: str) -> str | None:
    if text == _NONE:
        return None
    out = text
    for plain, escaped in _ESCAPES.items():
        if plain != "%":
            out = out.replace(escaped, plain)
    return out.replace("%25", "%")


def scope_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for the log stream of every scope under prefix."""
    glob_escaped = "".join("\\" + c if c in "*?[]\\" else c for c in encode_part(prefix))
    return "{" + glob_escaped + ":*:*}:log"


def parse_log_key(key: str) -> tuple[str, str | None, str | None]:
    """(prefix, tenant, environment) of a ``{T}:log`` key."""
    if not (key.startswith("{") and key.endswith("}:log")):
        raise ValueError(f"not a redgov log key: {key!r}")
    prefix, tenant, environment = key[1:-5].split(":")
    decoded_prefix = decode_part(prefix)
    assert decoded_prefix is not None
    return decoded_prefix, decode_part(tenant), decode_part(environment)


class Scope:
    """The key space of one (prefix, tenant, environment); key names computed once."""

    __slots__ = ("environment", "index", "log", "prefix", "tag", "tenant", "tids")

    def __init__(self, prefix: str, tenant: str | None = None, environment: str | None = None) -> None:
        self.prefix = prefix
        self.tenant = tenant
        self.environment = environment
        self.tag = "{%s:%s:%s}" % (encode_part(prefix), encode_part(tenant), encode_part(environment))
        self.log = self.tag + ":log"
        self.index = self.tag + ":index"
        self.tids = self.tag + ":tid"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.tag == other.tag

    def __hash__(self) -> int:
        return hash(self.tag)

    def __repr__(self) -> str:
        return f"Scope(prefix={self.prefix!r}, tenant={self.tenant!r}, environment={self.environment!r})"

    def experiment(self, name: str) -> ExperimentKeys:
        return ExperimentKeys(self.tag + ":x:" + encode_part(name))

    def transition_approvals(self, transition_id: str) -> str:
        return self.tag + ":tr:" + encode_part(transition_id) + ":approvals"


class ExperimentKeys:
    """The keys of one experiment in a scope."""

    __slots__ = ("base",)

    def __init__(self, base: str) -> None:
        self.base = base

    @property
    def state(self) -> str:
        return self.base + ":state"

    @property
    def states(self) -> str:
        return self.base + ":states"

    @property
    def transitions(self) -> str:
        return self.base + ":transitions"

    @property
    def approvals(self) -> str:
        return self.base + ":approvals"

    @property
    def versions(self) -> str:
        return self.base + ":versions"

    @property
    def policies(self) -> str:
        return self.base + ":policies"

    @property
    def policy_latest(self) -> str:
        return self.base + ":policy"

    @property
    def pending(self) -> str:
        return self.base + ":pending"

    @property
    def links(self) -> str:
        return self.base + ":links"

    def idempotency(self, key: str) -> str:
        return self.base + ":idem:" + encode_part(key)
