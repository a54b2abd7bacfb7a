"""The key schema is injective: distinct (prefix, tenant, environment, experiment) never share a key."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

import redgov
from redgov import Backplane, ExperimentState, LifecycleState, ValidationError
from redgov.keys import Scope, decode_part, encode_part, parse_log_key

TRICKY = [None, "", "a", "a:b", "b", ":", "{", "}", "{a}", "%", "%3A", "~", "%7E", " ", "ü n", "日本", "a}{b"]


def all_keys(prefix: str, tenant: str | None, environment: str | None, experiment: str) -> list[str]:
    scope = Scope(prefix, tenant, environment)
    exp = scope.experiment(experiment)
    return [*exp.standard, exp.idempotency("k"), exp.lease()]


def experiment_keys(prefix: str, tenant: str | None, environment: str | None, experiment: str) -> list[str]:
    """The keys that belong to one experiment (the scope-wide log, index and links are shared)."""
    exp = Scope(prefix, tenant, environment).experiment(experiment)
    return [exp.state, exp.history, exp.approvals, exp.policies, exp.versions, exp.latest, exp.base,
            exp.idempotency("k"), exp.lease()]


def test_seed_collision_case_is_distinct() -> None:
    # The seed's ':'-joined scheme: experiment "a:b" in no tenant == experiment "b" in tenant "a".
    assert Scope("gov", None).experiment("a:b").state != Scope("gov", "a").experiment("b").state
    assert Scope("gov", "a:b").experiment("c").state != Scope("gov", "a", "b").experiment("c").state


def test_none_and_empty_string_are_distinct() -> None:
    assert encode_part(None) != encode_part("")
    assert Scope("gov", None).tag != Scope("gov", "").tag
    assert Scope("gov", "~").tag != Scope("gov", None).tag


def test_tricky_tuples_never_share_a_key() -> None:
    seen: dict[str, tuple[object, ...]] = {}
    names = [n for n in TRICKY if n]
    for prefix, tenant, env, exp in itertools.product(["gov", "g:o", "g~o", "g%7Bo"], TRICKY, TRICKY[:6], names):
        for key in experiment_keys(prefix, tenant, env, exp):
            owner = (prefix, tenant, env, exp)
            assert seen.setdefault(key, owner) == owner, f"{key} shared by {owner} and {seen[key]}"


part = st.one_of(st.none(), st.text(max_size=12))


prefixes = st.text(min_size=1, max_size=8).filter(lambda p: "{" not in p and "}" not in p)


@given(st.tuples(prefixes, part, part, st.text(min_size=1, max_size=12)),
       st.tuples(prefixes, part, part, st.text(min_size=1, max_size=12)))
def test_encoding_is_injective(one: tuple[str, str | None, str | None, str],
                               two: tuple[str, str | None, str | None, str]) -> None:
    if one != two:
        assert not set(experiment_keys(*one)) & set(experiment_keys(*two))
    if one[:3] != two[:3]:
        assert Scope(*one[:3]).log != Scope(*two[:3]).log


@given(part)
def test_encode_round_trips(value: str | None) -> None:
    assert decode_part(encode_part(value)) == value


@given(prefixes, part, part, st.text(min_size=1, max_size=12))
def test_every_key_of_a_scope_shares_one_slot(prefix: str, tenant: str | None, env: str | None, exp: str) -> None:
    scope = Scope(prefix, tenant, env)
    keys = [scope.log, scope.index, scope.links, scope.ops(), *all_keys(prefix, tenant, env, exp)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert parse_log_key(scope.log) == (prefix, tenant, env)


@given(prefixes, part, part, st.text(min_size=1, max_size=12))
def test_every_key_begins_with_the_literal_prefix(prefix: str, tenant: str | None, env: str | None,
                                                  exp: str) -> None:
    scope = Scope(prefix, tenant, env)
    for key in [scope.log, scope.index, scope.links, scope.ops(), *all_keys(prefix, tenant, env, exp)]:
        assert key.startswith(prefix + "{"), key


def test_a_prefix_with_braces_is_refused() -> None:
    for bad in ["a{b", "}", "{x}", ""]:
        with pytest.raises(ValidationError, match="prefix"):
            redgov.connect("memory://", prefix=bad)


def test_the_readme_example_key() -> None:
    # prod:governance: stays literal (ACL ~prod:governance:* and SCAN MATCH prod:governance:* cover it)
    assert Scope("prod:governance:", "acme", None).experiment("a:b").state == "prod:governance:{acme:~}:s:a%3Ab"
    assert Scope("gov", "acme", None).experiment("a:b").state == "gov{acme:~}:s:a%3Ab"


def test_tricky_names_live_side_by_side(backplane: Backplane) -> None:
    written = {}
    for tenant in [None, "", "a", "a:b"]:
        for name in ["a", "a:b", "b", "{x}", "ü n", "a}{b", "~"]:
            state = ExperimentState(experiment=name, state=LifecycleState.DRAFT, tenant=tenant,
                                    metadata={"who": [tenant, name]})
            result = backplane.save_state(state)
            assert result.ok, (tenant, name, result.error)
            written[(tenant, name)] = result.state
    for (tenant, name), state in written.items():
        assert backplane.get_state(name, tenant=tenant) == state
