"""Publishing under load: the rules a scope publishes govern every write acknowledged after the publish.

Eight OS processes (``spawn``) move their own experiments in a loop through a Governance built with no
definition of its own (they follow the published rules), while the test process publishes a stricter
definition (Paused may no longer return to Running). Ordered by the scope log's entry ids, no
transition written after the rules event of the new version may be a move the new version forbids:
each write's script checked the rules version it was decided under, so a process still deciding under
the old version was refused and decided again.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from typing import Any

import redis

import redgov
from redgov import Governance, InvalidTransitionError, LifecycleState, Rules
from redgov.codec import decode_fields
from redgov.rules import DEFAULT_RULES

from .conftest import delete_prefix

S = LifecycleState
WORKERS = 8
WORKER_SECONDS = 6.0  # each worker's loop, wall clock
PUBLISH_AFTER = 1.5  # seconds after the workers report ready
JOIN_TIMEOUT = 90.0
START_TIMEOUT = 60.0

#: the stricter rules: Paused may no longer move to Running
STRICT = {state.value: [t.value for t in targets if not (state is S.PAUSED and t is S.RUNNING)]
          for state, targets in DEFAULT_RULES.items()}


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)


def _worker(url: str, prefix: str, name: str, ready: Any, go: Any, out: Any) -> None:
    try:
        with redgov.connect(url, prefix=prefix) as bp:
            gov = Governance(bp)  # no definition of its own: it follows the published rules
            gov.state(name)
            ready.put(name)
            if not go.wait(START_TIMEOUT):
                out.put((name, "no start signal", 0, 0))
                return
            moved = refused = 0
            deadline = time.monotonic() + WORKER_SECONDS
            while time.monotonic() < deadline and moved < 5000:
                state = gov.state(name)
                assert state is not None
                target = {S.RUNNING: S.PAUSED, S.RAMPING: S.PAUSED}.get(state.state, S.RUNNING)
                try:
                    gov.transition(name, target, actor=name)
                except InvalidTransitionError:
                    refused += 1
                    gov.transition(name, S.RAMPING, actor=name)  # the way the strict rules leave open
                moved += 1
            out.put((name, "", moved, refused))
    except BaseException:  # reported, so the test fails with the worker's traceback
        out.put((name, traceback.format_exc(), 0, 0))


def test_no_move_the_new_rules_forbid_is_written_after_the_publish(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    names = [f"exp-{i}" for i in range(WORKERS)]
    try:
        with redgov.connect(redis_url, prefix=prefix) as bp:
            setup = Governance(bp)
            setup.publish(actor="admin", reason="the default lifecycle")
            for name in names:
                setup.create(name, actor="setup")
                for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
                    setup.transition(name, target, actor="setup")
            ctx = multiprocessing.get_context("spawn")
            ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            workers = [ctx.Process(target=_worker, args=(redis_url, prefix, n, ready, go, out), daemon=True)
                       for n in names]
            for w in workers:
                w.start()
            try:
                for _ in names:
                    ready.get(timeout=START_TIMEOUT)
                go.set()
                time.sleep(PUBLISH_AFTER)
                strict = Governance(bp, rules=Rules(STRICT)).publish(actor="admin", reason="no way back to Running")
                assert strict.version == 2
                reports = [out.get(timeout=JOIN_TIMEOUT) for _ in names]
            finally:
                for w in workers:
                    w.join(timeout=10)
                    if w.is_alive():
                        w.kill()
            failures = [r for r in reports if r[1]]
            assert not failures, failures
            assert sum(r[3] for r in reports) > 0  # the strict rules refused moves the workers tried

            log = bp.client.xrange(bp.core.scope(None, None).log)
        published_at = [entry_id for entry_id, fields in log
                        if fields[b"k"] == b"rules" and fields[b"n"] == b"2"]
        assert len(published_at) == 1
        cut = _id(published_at[0])
        before = after = 0
        strict_rules = Rules(STRICT)
        for entry_id, fields in log:
            if fields[b"k"] != b"transition" or b"from" not in fields:
                continue
            record = decode_fields(entry_id.decode(), {k.decode(): v for k, v in fields.items()}, "log").record
            allowed = strict_rules.permits(record.from_state, record.to_state)
            if _id(entry_id) > cut:
                after += 1
                assert allowed, f"{entry_id!r}: {record.from_state} -> {record.to_state} after the strict rules"
            elif record.from_state is S.PAUSED and record.to_state is S.RUNNING:
                before += 1
        assert before > 0 and after > WORKERS  # both sides of the publish saw real traffic
    finally:
        delete_prefix(client, prefix)
        client.close()
