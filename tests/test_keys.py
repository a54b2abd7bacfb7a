"""The key schema is injective: distinct (prefix, tenant, environment, experiment) never share a key."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from redgov import Backplane, ExperimentState, LifecycleState
from redgov.keys import Scope, decode_part, encode_part, parse_log_key

TRICKY = [None, "", "a", "a:b", "b", ":", "{", "}", "{a}", "%", "%3A", "~", "%7E", " ", "ü n", "日本", "a}{b"]


def all_keys(prefix: str, tenant: str | None, environment: str | None, experiment: str) -> list[str]:
    scope = Scope(prefix, tenant, environment)
    exp = scope.experiment(experiment)
    return [exp.state, exp.states, exp.transitions, exp.approvals, exp.versions, exp.policies,
            exp.policy_latest, scope.transition_approvals(experiment)]


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
    for prefix, tenant, env, exp in itertools.product(["gov", "g:o", "{g}"], TRICKY, TRICKY[:6], names):
        for key in all_keys(prefix, tenant, env, exp):
            owner = (prefix, tenant, env, exp)
            assert seen.setdefault(key, owner) == owner, f"{key} shared by {owner} and {seen[key]}"


part = st.one_of(st.none(), st.text(max_size=12))


@given(st.tuples(st.text(min_size=1, max_size=8), part, part, st.text(min_size=1, max_size=12)),
       st.tuples(st.text(min_size=1, max_size=8), part, part, st.text(min_size=1, max_size=12)))
def test_encoding_is_injective(one: tuple[str, str | None, str | None, str],
                               two: tuple[str, str | None, str | None, str]) -> None:
    if one != two:
        assert not set(all_keys(*one)) & set(all_keys(*two))


@given(part)
def test_encode_round_trips(value: str | None) -> None:
    assert decode_part(encode_part(value)) == value


@given(st.text(min_size=1, max_size=8), part, part, st.text(min_size=1, max_size=12))
def test_every_key_of_a_scope_shares_one_slot(prefix: str, tenant: str | None, env: str | None, exp: str) -> None:
    scope = Scope(prefix, tenant, env)
    slots = {key_slot(k.encode()) for k in [scope.log, scope.index, scope.tids, *all_keys(prefix, tenant, env, exp)]}
    assert len(slots) == 1
    assert parse_log_key(scope.log) == (prefix, tenant, env)


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
