"""OpenTelemetry instrumentation (redgov/telemetry.py): spans and metrics when a provider is set, nothing otherwise.

The SDK's in-memory exporter and reader are given to one Governance with
``redgov.telemetry.instrument`` (a global provider can be set only once per process,
and would instrument every later test's Governance); what a global provider does
at construction is checked in a subprocess.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import redgov
import redgov.aio
from redgov import Backplane, Governance, LifecycleState, TrafficLimit
from redgov.telemetry import DURATION_BUCKETS, configured_providers, instrument, instrumented, uninstrument

PENDING, APPROVED, RUNNING = LifecycleState.PENDING_APPROVAL, LifecycleState.APPROVED, LifecycleState.RUNNING


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of ``metric`` keyed by their sorted attributes."""
        data = self.reader.get_metrics_data()
        out: dict[tuple[tuple[str, Any], ...], Any] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        for point in m.data.data_points:
                            out[tuple(sorted(point.attributes.items()))] = point
        return out

    def count(self, operation: str, outcome: str) -> int:
        for attributes, point in self.points("redgov.operations").items():
            found = dict(attributes)
            if found["redgov.operation"] == operation and found["redgov.outcome"] == outcome:
                return int(point.value)
        return 0


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Otel(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _instrumented(gov: Any, otel: Otel) -> Any:
    assert instrument(gov, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    return gov


def _check_refusal(span: ReadableSpan, error: type[Exception]) -> None:
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None and span.status.description.startswith(f"{error.__name__}: ")
    assert span.attributes is not None
    assert span.attributes["redgov.outcome"] == error.__name__
    assert span.attributes["error.type"] == f"redgov.errors.{error.__name__}"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None and event.attributes["exception.type"].endswith(error.__name__)


def test_no_provider_means_no_instrumentation(backplane: Backplane, otel: Otel) -> None:
    assert configured_providers() == (None, None)  # the API's default proxies count as not set
    gov = Governance(backplane)
    assert type(gov) is Governance and instrumented(gov) is None
    gov.create("e")
    assert gov.transition("e", PENDING).to_state is PENDING
    assert otel.finished() == [] and otel.points("redgov.operations") == {}


def test_transition_span_and_metrics(backplane: Backplane, otel: Otel) -> None:
    gov = _instrumented(Governance(backplane), otel)
    assert type(gov).__name__ == "Governance" and isinstance(gov, Governance)
    gov.create("e", tenant="t", environment="prod", actor="alice")
    moved = gov.transition("e", PENDING, tenant="t", environment="prod", actor="alice")
    assert moved.to_state is PENDING and moved.revision == 2

    create, transition = otel.finished()
    assert create.name == "redgov.create" and transition.name == "redgov.transition"
    assert transition.kind.name == "INTERNAL"
    assert transition.status.status_code is StatusCode.UNSET
    attributes = dict(transition.attributes or {})
    assert attributes["db.system"] == attributes["db.system.name"] == "redis"
    assert attributes["redgov.prefix"] == backplane.prefix
    assert {k: attributes[k] for k in ("redgov.experiment", "redgov.tenant", "redgov.environment",
                                       "redgov.from_state", "redgov.to_state", "redgov.revision",
                                       "redgov.outcome")} == {
        "redgov.experiment": "e", "redgov.tenant": "t", "redgov.environment": "prod",
        "redgov.from_state": "Draft", "redgov.to_state": "PendingApproval", "redgov.revision": 2,
        "redgov.outcome": "ok"}
    assert "alice" not in attributes.values()  # actors are not recorded
    if backplane.client.__module__.startswith("redis."):
        assert attributes["server.address"] and isinstance(attributes["server.port"], int)
        assert attributes["db.namespace"].isdigit()

    assert otel.count("create", "ok") == 1 and otel.count("transition", "ok") == 1
    durations = otel.points("redgov.operation.duration")
    point = durations[(("redgov.operation", "transition"), ("redgov.outcome", "ok"))]
    assert point.count == 1 and 0 < point.sum < 5
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS


def test_refusals_are_errors(backplane: Backplane, otel: Otel) -> None:
    gov = _instrumented(Governance(backplane, policies=[TrafficLimit(10.0)]), otel)
    gov.create("e")
    with pytest.raises(redgov.InvalidTransitionError) as invalid:
        gov.transition("e", RUNNING)
    assert "Draft -> Running" in str(invalid.value)
    with pytest.raises(redgov.PolicyViolationError) as violation:
        gov.transition("e", PENDING, telemetry={"trafficPercentage": 50.0})
    assert violation.value.evaluations and not violation.value.evaluations[0].compliant
    assert gov.state("e").state is LifecycleState.DRAFT  # type: ignore[union-attr]

    first, second = otel.finished("redgov.transition")
    _check_refusal(first, redgov.InvalidTransitionError)
    _check_refusal(second, redgov.PolicyViolationError)
    assert first.attributes is not None and first.attributes["redgov.to_state"] == "Running"
    assert otel.count("transition", "InvalidTransitionError") == 1
    assert otel.count("transition", "PolicyViolationError") == 1
    assert otel.count("transition", "ok") == 0
    errors = [dict(a) for a in otel.points("redgov.operations") if dict(a)["redgov.outcome"] != "ok"]
    assert {e["error.type"] for e in errors} == {"redgov.errors.InvalidTransitionError",
                                                 "redgov.errors.PolicyViolationError"}


def test_behaviour_and_signatures_are_unchanged(backplane: Backplane, otel: Otel) -> None:
    plain = Governance(backplane)
    gov = _instrumented(Governance(backplane), otel)
    for name in ("transition", "approve", "create_version", "wait_for", "state"):
        assert inspect.signature(getattr(gov, name)) == inspect.signature(getattr(plain, name)), name
        assert getattr(gov, name).__doc__ == getattr(plain, name).__doc__
    gov.create("e", configuration={"a": 1})
    assert gov.create_version("e", {"a": 2}).version == 2
    assert gov.rollback("e", 1).rolled_back_from == 1
    assert [c.path for c in gov.diff("e", 1, 2)] == ["a"]
    assert gov.state("e") == plain.state("e")
    assert gov.history("e") == plain.history("e")
    assert gov.verify("e") == [] and gov.replay("e") == plain.replay("e")
    with pytest.raises(redgov.NotFoundError) as mine:
        gov.transition("missing", PENDING)
    with pytest.raises(redgov.NotFoundError) as theirs:
        plain.transition("missing", PENDING)
    assert str(mine.value) == str(theirs.value)
    batch = gov.transition_many([redgov.TransitionRequest(experiment="e", to=PENDING),
                                 redgov.TransitionRequest(experiment="e", to=RUNNING)])
    assert batch[0].to_state is PENDING and isinstance(batch[1], redgov.InvalidTransitionError)  # type: ignore[union-attr]
    assert gov.wait_for("e", [PENDING], timeout=0).state is PENDING
    names = [s.name for s in otel.finished()]
    assert names == ["redgov.create", "redgov.create_version", "redgov.rollback", "redgov.diff", "redgov.state",
                     "redgov.history", "redgov.verify", "redgov.replay", "redgov.transition",
                     "redgov.transition_many", "redgov.wait_for"]
    (many,) = otel.finished("redgov.transition_many")
    assert many.attributes is not None
    assert (many.attributes["redgov.batch.size"], many.attributes["redgov.batch.refused"]) == (2, 1)
    (wait,) = otel.finished("redgov.wait_for")
    assert wait.attributes is not None and list(wait.attributes["redgov.states"]) == ["PendingApproval"]
    uninstrument(gov)
    assert type(gov) is Governance and instrumented(gov) is None
    gov.state("e")
    assert len(otel.finished()) == len(names)


def test_spans_nest_under_the_callers_span_and_leases_name_their_experiment(backplane: Backplane,
                                                                             otel: Otel) -> None:
    gov = _instrumented(Governance(backplane), otel)
    gov.create("e", environment="prod")
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as outer:
        lease = gov.acquire_lease("e", owner="ctl-1", ttl=timedelta(seconds=30), environment="prod")
        gov.renew_lease(lease, ttl=timedelta(seconds=30))
        assert gov.current_lease("e", environment="prod") is not None
        gov.release_lease(lease)
    spans = {s.name: s for s in otel.finished()}
    shown = spans["redgov.current_lease"].attributes
    assert shown is not None and shown["redgov.experiment"] == "e" and shown["redgov.lease.token"] == lease.token
    for name in ("redgov.acquire_lease", "redgov.renew_lease", "redgov.release_lease"):
        span = spans[name]
        assert span.parent is not None and span.parent.span_id == outer.get_span_context().span_id, name
        assert span.attributes is not None
        assert span.attributes["redgov.experiment"] == "e" and span.attributes["redgov.environment"] == "prod"
        assert span.attributes["redgov.lease.owner"] == "ctl-1"
        assert span.attributes["redgov.lease.token"] == lease.token


def test_metrics_only(backplane: Backplane, otel: Otel) -> None:
    gov = Governance(backplane)
    assert instrument(gov, meter_provider=otel.meter_provider)  # no global tracer provider: no spans
    gov.create("e")
    gov.evaluate_policies("e")
    assert otel.finished() == []
    assert otel.count("create", "ok") == 1 and otel.count("evaluate_policies", "ok") == 1
    assert not instrument(gov)  # no provider given nor set: back to plain
    assert type(gov) is Governance


def test_async_twin(url: str, prefix: str, otel: Otel) -> None:
    from redgov.aio import AsyncGovernance

    async def body() -> None:
        async with AsyncGovernance(redgov.aio.connect(url, prefix=prefix)) as gov:
            assert type(gov) is AsyncGovernance
            _instrumented(gov, otel)
            assert type(gov).__name__ == "AsyncGovernance" and inspect.iscoroutinefunction(gov.transition)
            await gov.create("e", tenant="t")
            tracer = otel.tracer_provider.get_tracer("test")
            with tracer.start_as_current_span("request") as outer:
                moved = await gov.transition("e", PENDING, tenant="t")
                assert moved.to_state is PENDING
                with pytest.raises(redgov.InvalidTransitionError):
                    await gov.transition("e", RUNNING, tenant="t")
                # two concurrent tasks: each call's span is current in its own task only
                await asyncio.gather(gov.state("e", tenant="t"), gov.history("e", tenant="t"))
            ok, refused = otel.finished("redgov.transition")
            assert ok.attributes is not None and ok.attributes["redgov.from_state"] == "Draft"
            assert ok.attributes["redgov.tenant"] == "t"
            _check_refusal(refused, redgov.InvalidTransitionError)
            for span in (ok, refused, *otel.finished("redgov.state"), *otel.finished("redgov.history")):
                assert span.parent is not None and span.parent.span_id == outer.get_span_context().span_id
            assert otel.count("transition", "ok") == 1 and otel.count("transition", "InvalidTransitionError") == 1
            events = [e async for e in gov.watch(from_id="0", tenant="t", timeout=0.2)]  # watch: no span
            assert len(events) >= 3 and not otel.finished("redgov.watch")

    asyncio.run(body())


def _run(code: str) -> Any:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_global_provider_is_picked_up_by_governances_made_after_it() -> None:
    code = """if True:
        import json, redgov
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from redgov.telemetry import instrumented
        before = redgov.Governance(redgov.connect("memory://", prefix="p"))
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        after = redgov.Governance(redgov.connect("memory://", prefix="p"))
        import redgov.aio
        async_after = redgov.aio.AsyncGovernance(redgov.aio.connect("memory://", prefix="p"))
        before.create("a")
        after.create("b")
        after.transition("b", "PendingApproval")
        print(json.dumps([instrumented(before) is None, instrumented(after) is not None,
                          instrumented(async_after) is not None,
                          [s.name for s in exporter.get_finished_spans()],
                          reader.get_metrics_data() is not None]))
    """
    assert _run(code) == [True, True, True, ["redgov.create", "redgov.transition"], True]


def test_redgov_imports_no_opentelemetry() -> None:
    """Neither ``import redgov`` nor a Governance's calls import opentelemetry (beyond what redis-py imports
    itself); with opentelemetry not importable at all, everything works uninstrumented."""
    blocker = """if True:
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def __init__(self, refuse): self.refuse, self.asked = refuse, []
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    self.asked.append(name)
                    if self.refuse:
                        raise ImportError(name)
                return None
    """
    use = """
        import json, redgov
        from redgov.telemetry import instrumented
        gov = redgov.Governance(redgov.connect("memory://", prefix="p"))
        gov.create("e")
        gov.transition("e", "PendingApproval")
        print(json.dumps([block.asked, instrumented(gov) is None, type(gov) is redgov.Governance]))
    """
    after_redis = _run(blocker + "\n        import redis\n        block = Block(False)\n"
                       "        sys.meta_path.insert(0, block)" + use)
    assert after_redis == [[], True, True]
    not_installed = _run(blocker + "\n        block = Block(True)\n        sys.meta_path.insert(0, block)" + use)
    assert not_installed[1:] == [True, True]
