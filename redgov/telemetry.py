"""OpenTelemetry spans and metrics around Governance operations, only when an application configured them.

A Governance (or AsyncGovernance) decides once, when it is made, whether it is
instrumented: it is when ``opentelemetry-api`` is installed and a real tracer or
meter provider has been set (``trace.set_tracer_provider``,
``metrics.set_meter_provider``, ``OTEL_PYTHON_TRACER_PROVIDER`` /
``OTEL_PYTHON_METER_PROVIDER``, or ``opentelemetry-instrument``), not the API's
default proxy or no-op providers. A provider set later is picked up by
Governances made after it; ``instrument(governance)`` attaches one to an
existing Governance, ``uninstrument`` removes it.

Cost when not instrumented: none per call. Nothing is wrapped: an instrumented
Governance is switched to a subclass (made once per class, same name) whose
operations are wrapped, so an uninstrumented one runs the plain methods. The
decision itself reads ``sys.modules`` and the environment: when no code imported
``opentelemetry.trace`` / ``opentelemetry.metrics`` no provider can have been
set, and nothing is imported (redgov never imports opentelemetry; redis-py >= 8
imports it itself when it is installed, and then the check asks the API for its
providers, once per Governance made).

An instrumented operation (the names of ``OPERATIONS``; not ``watch``, whose
events are yielded to the caller, nor ``close``) gets:

- a span ``redgov.<operation>`` (kind INTERNAL: it contains the Redis calls, which
  a redis-py instrumentation shows as CLIENT spans under it) with ``db.system`` and
  ``db.system.name`` = ``"redis"``, ``server.address``/``server.port`` or the unix
  socket, ``db.namespace`` (the database index), ``redgov.prefix``, the call's
  ``redgov.experiment``, ``redgov.tenant``, ``redgov.environment`` (each only when
  not None), ``redgov.to_state`` (``to``; ``target`` of evaluate_policies),
  ``redgov.states`` (wait_for), ``redgov.from_version``/``redgov.to_version``,
  ``redgov.lease.owner``/``redgov.lease.token``; on success what the result says
  (``redgov.from_state``, ``redgov.state``, ``redgov.revision``, ``redgov.version``,
  ``redgov.approved``, ``redgov.batch.size``/``redgov.batch.refused``,
  ``redgov.policies.noncompliant``) and ``redgov.outcome`` = ``"ok"``; when it raises,
  status ERROR (``"<Class>: <message>"``), the exception recorded as an event,
  ``error.type`` (the exception's fully qualified class name) and ``redgov.outcome``
  (its class name). Actors, reasons, metadata and configurations are never recorded.
- metrics (meter ``redgov``): the counter ``redgov.operations`` and the histogram
  ``redgov.operation.duration`` (seconds), both with ``redgov.operation`` and
  ``redgov.outcome`` (``ok`` or the exception's class name; plus ``error.type`` on
  failure). No experiment, tenant or environment on metrics: they would make
  unbounded series.

Return values and exceptions are those of the plain method; AsyncGovernance's spans
cover the awaited call (the span is current in the calling task only); ``wait_for``'s
span covers the whole wait (a ``state``/``replay`` read it makes shows as a child span).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import Any

from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    Lease,
    PolicyEvaluation,
    StateTransition,
)

__all__ = [
    "DURATION_BUCKETS",
    "OPERATIONS",
    "Telemetry",
    "attach",
    "configured_providers",
    "instrument",
    "instrumented",
    "uninstrument",
]

#: The operations that get a span and metrics (sync and async alike): every write, then the reads.
OPERATIONS = (
    "create", "transition", "transition_many", "approve", "create_version", "rollback", "evaluate_policies",
    "acquire_lease", "renew_lease", "release_lease",
    "state", "allowed_transitions", "history", "experiments", "awaiting_approval", "current_lease", "diff",
    "replay", "verify", "wait_for",
)

#: Histogram buckets (seconds): a cached read takes microseconds, a write ~0.1 ms, wait_for up to its timeout.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0)

_TRACER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_METER_ENV = "OTEL_PYTHON_METER_PROVIDER"
_SCOPE = "redgov"

#: call parameter -> span attribute, for parameters whose value is a string (or a str enum) or an int
_PARAMETERS = {
    "experiment": "redgov.experiment",
    "to": "redgov.to_state",
    "target": "redgov.to_state",
    "state": "redgov.state",
    "owner": "redgov.lease.owner",
    "from_version": "redgov.from_version",
    "to_version": "redgov.to_version",
}
_SCOPE_PARAMETERS = {"tenant": "redgov.tenant", "environment": "redgov.environment"}


# -- deciding ------------------------------------------------------------------------


def _real_tracer_provider() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)) else provider


def _real_meter_provider() -> Any:
    try:
        from opentelemetry import metrics
        from opentelemetry.metrics import _internal as internal
    except ImportError:
        return None
    provider = metrics.get_meter_provider()
    placeholders = (metrics.NoOpMeterProvider, getattr(internal, "_ProxyMeterProvider", metrics.NoOpMeterProvider))
    return None if isinstance(provider, placeholders) else provider


def configured_providers() -> tuple[Any, Any]:
    """The global (tracer provider, meter provider) an application set; None for each that is not set.

    Without ``opentelemetry.trace`` (``.metrics``) imported and no ``OTEL_PYTHON_TRACER_PROVIDER``
    (``..._METER_PROVIDER``) in the environment no provider can be set: nothing is imported then.
    The API's default proxy and no-op providers count as not set; ``OTEL_SDK_DISABLED=true`` sets none.
    """
    modules, env = sys.modules, os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None, None
    tracer = _real_tracer_provider() if "opentelemetry.trace" in modules or _TRACER_ENV in env else None
    meter = _real_meter_provider() if "opentelemetry.metrics" in modules or _METER_ENV in env else None
    return tracer, meter


# -- recording -------------------------------------------------------------------------


def _text(value: object) -> str | None:
    """A str or str-enum value as plain text (``LifecycleState.RUNNING`` -> ``"Running"``); else None."""
    if not isinstance(value, str):
        return None
    inner = getattr(value, "value", value)
    return inner if isinstance(inner, str) else str(value)


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _connection_attributes(client: Any) -> dict[str, Any]:
    """``server.*``/``network.transport``/``db.namespace`` of a redis-py client (nothing for fakeredis)."""
    if type(client).__module__.split(".")[0] == "fakeredis":
        return {}
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    out: dict[str, Any] = {}
    if "path" in kwargs:
        out["server.address"] = str(kwargs["path"])
        out["network.transport"] = "unix"
    elif "host" in kwargs:
        out["server.address"] = str(kwargs["host"])
        out["server.port"] = int(kwargs.get("port", 6379))
    else:  # a Cluster: its first startup node
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        first = next(iter(nodes.values()), None)
        if first is not None:
            out["server.address"] = str(first.host)
            out["server.port"] = int(first.port)
        return out
    out["db.namespace"] = str(kwargs.get("db", 0))
    return out


def _result_attributes(operation: str, result: object) -> dict[str, Any]:
    """What a successful call's result says, as span attributes (with ``redgov.outcome`` = ``"ok"``)."""
    if isinstance(result, StateTransition):
        out: dict[str, Any] = {"redgov.to_state": result.to_state.value, "redgov.revision": result.revision}
        if result.from_state is not None:
            out["redgov.from_state"] = result.from_state.value
    elif isinstance(result, ExperimentState):
        out = {"redgov.state": result.state.value, "redgov.revision": result.revision}
    elif isinstance(result, ConfigurationVersion):
        out = {"redgov.version": result.version}
    elif isinstance(result, ApprovalRecord):
        out = {"redgov.approved": result.approved}
    elif isinstance(result, Lease):
        out = {"redgov.lease.token": result.token}
    elif isinstance(result, list) and operation == "transition_many":
        out = {"redgov.batch.size": len(result),
               "redgov.batch.refused": sum(1 for r in result if isinstance(r, Exception))}
    elif isinstance(result, list) and result and isinstance(result[0], PolicyEvaluation):
        out = {"redgov.policies.noncompliant": sum(1 for e in result if not e.compliant)}
    else:
        out = {}
    out["redgov.outcome"] = "ok"
    return out


class Telemetry:
    """What one Governance records into: a tracer, the two instruments, the attributes of every span.

    ``Telemetry(backplane, tracer_provider, meter_provider)``: either provider may be None (no
    spans, or no metrics). Made by ``attach``/``instrument``; tests may make one with SDK providers.
    """

    __slots__ = ("attributes", "counter", "duration", "tracer", "_error", "_internal", "_ok", "_set_span",
                 "_attach", "_detach")

    def __init__(self, backplane: Any, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from . import __version__

        self.tracer: Any = None
        self.counter: Any = None
        self.duration: Any = None
        #: the attributes every span of this Governance carries
        self.attributes: dict[str, Any] = {"db.system": "redis", "db.system.name": "redis",
                                           "redgov.prefix": backplane.core.prefix,
                                           **_connection_attributes(backplane.client)}
        #: per operation, the metric attributes of a success (built once)
        self._ok = {op: {"redgov.operation": op, "redgov.outcome": "ok"} for op in OPERATIONS}
        if tracer_provider is not None:
            from opentelemetry import context, trace

            self.tracer = tracer_provider.get_tracer(_SCOPE, __version__)
            self._internal = trace.SpanKind.INTERNAL
            self._error = (trace.Status, trace.StatusCode.ERROR)
            self._set_span = trace.set_span_in_context
            self._attach, self._detach = context.attach, context.detach
        if meter_provider is not None:
            meter = meter_provider.get_meter(_SCOPE, __version__)
            self.counter = meter.create_counter(
                "redgov.operations", unit="{operation}",
                description="Governance operations, by operation and outcome (ok or the exception's class name)")
            description = "Duration of Governance operations"
            try:
                self.duration = meter.create_histogram("redgov.operation.duration", unit="s", description=description,
                                                       explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
            except TypeError:  # opentelemetry-api < 1.23 takes no advice
                self.duration = meter.create_histogram("redgov.operation.duration", unit="s",
                                                       description=description)

    def begin(self, operation: str, call_attributes: Callable[[Sequence[Any], Mapping[str, Any]], dict[str, Any]],
              args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Call:
        """Start recording one call (its span made current): finish with ``ok`` or ``failed``."""
        span = token = None
        if self.tracer is not None:
            attributes = {**self.attributes, **call_attributes(args, kwargs)}
            span = self.tracer.start_span(f"redgov.{operation}", kind=self._internal, attributes=attributes)
            token = self._attach(self._set_span(span))
        return _Call(self, operation, span, token)


class _Call:
    """One operation being recorded."""

    __slots__ = ("operation", "span", "started", "telemetry", "token")

    def __init__(self, telemetry: Telemetry, operation: str, span: Any, token: Any) -> None:
        self.telemetry = telemetry
        self.operation = operation
        self.span = span
        self.token = token
        self.started = perf_counter()

    def ok(self, result: object) -> None:
        elapsed = perf_counter() - self.started
        telemetry = self.telemetry
        span = self.span
        if span is not None:
            telemetry._detach(self.token)
            if span.is_recording():
                span.set_attributes(_result_attributes(self.operation, result))  # one call: one lock
            span.end()
        if telemetry.counter is not None:
            attributes = telemetry._ok[self.operation]
            telemetry.counter.add(1, attributes)
            telemetry.duration.record(elapsed, attributes)

    def failed(self, exc: BaseException) -> None:
        elapsed = perf_counter() - self.started
        telemetry = self.telemetry
        outcome, error_type = type(exc).__name__, _error_type(exc)
        span = self.span
        if span is not None:
            telemetry._detach(self.token)
            if span.is_recording():
                span.record_exception(exc)
                status, error = telemetry._error
                span.set_status(status(error, f"{outcome}: {exc}"))
                span.set_attributes({"error.type": error_type, "redgov.outcome": outcome})
            span.end()
        if telemetry.counter is not None:
            attributes = {"redgov.operation": self.operation, "redgov.outcome": outcome, "error.type": error_type}
            telemetry.counter.add(1, attributes)
            telemetry.duration.record(elapsed, attributes)


# -- wrapping --------------------------------------------------------------------------


def _extractor(func: Callable[..., Any]) -> Callable[[Sequence[Any], Mapping[str, Any]], dict[str, Any]]:
    """From ``func``'s signature (read once), a function of a call's (args, kwargs) -> its span attributes."""
    import inspect

    params = list(inspect.signature(func).parameters.values())[1:]  # without self
    positional = {p.name: i for i, p in enumerate(params)
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)}
    names = {p.name for p in params}
    wanted = [(name, attribute, positional.get(name)) for name, attribute in _PARAMETERS.items() if name in names]
    scoped = [(name, attribute) for name, attribute in _SCOPE_PARAMETERS.items() if name in names]
    states_at = positional.get("states") if "states" in names else -1
    lease_at = positional.get("lease") if "lease" in names else -1
    lease_scope = "experiment" not in names  # renew_lease, release_lease: the lease names the experiment

    def extract(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, attribute, at in wanted:
            value = args[at] if at is not None and at < len(args) else kwargs.get(name)
            if type(value) is int:
                out[attribute] = value
            else:
                text = _text(value)
                if text is not None:
                    out[attribute] = text
        for name, attribute in scoped:
            text = _text(kwargs.get(name))
            if text is not None:
                out[attribute] = text
        if states_at != -1:
            states = args[states_at] if states_at is not None and states_at < len(args) else kwargs.get("states")
            if isinstance(states, str):
                out["redgov.states"] = [_text(states)]
            elif isinstance(states, (list, tuple, set, frozenset)):  # never consume an iterator
                out["redgov.states"] = sorted(t for t in map(_text, states) if t is not None)
        if lease_at != -1:
            lease = args[lease_at] if lease_at is not None and lease_at < len(args) else kwargs.get("lease")
            if lease_scope:
                for field, attribute in (("experiment", "redgov.experiment"), ("tenant", "redgov.tenant"),
                                         ("environment", "redgov.environment"), ("owner", "redgov.lease.owner")):
                    text = _text(getattr(lease, field, None))
                    if text is not None:
                        out[attribute] = text
            token = getattr(lease, "token", None)
            if type(token) is int:
                out["redgov.lease.token"] = token
        return out

    return extract


def _wrap(func: Callable[..., Any], operation: str) -> Callable[..., Any]:
    import inspect

    extract = _extractor(func)
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def traced_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = self._telemetry.begin(operation, extract, args, kwargs)
            try:
                result = await func(self, *args, **kwargs)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.ok(result)
            return result

        return traced_async

    @functools.wraps(func)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = self._telemetry.begin(operation, extract, args, kwargs)
        try:
            result = func(self, *args, **kwargs)
        except BaseException as exc:
            call.failed(exc)
            raise
        call.ok(result)
        return result

    return traced


_TRACED: dict[type, type] = {}


def _traced_class(cls: type) -> type:
    """The subclass of ``cls`` whose operations record (made once per class; same name and module)."""
    traced = _TRACED.get(cls)
    if traced is None:
        namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                     "__doc__": cls.__doc__, "_untraced_class": cls}
        for operation in OPERATIONS:
            func = getattr(cls, operation, None)
            if callable(func):
                namespace[operation] = _wrap(func, operation)
        traced = _TRACED.setdefault(cls, type(cls.__name__, (cls,), namespace))
    return traced


def _base_class(governance: Any) -> type:
    cls: type = type(governance)
    return getattr(cls, "_untraced_class", cls) if cls in _TRACED.values() else cls


def instrumented(governance: Any) -> Telemetry | None:
    """The Telemetry ``governance`` records into, or None when it is not instrumented."""
    telemetry = governance.__dict__.get("_telemetry")
    return telemetry if isinstance(telemetry, Telemetry) else None


def _install(governance: Any, telemetry: Telemetry) -> None:
    governance._telemetry = telemetry
    governance.__class__ = _traced_class(_base_class(governance))


def attach(governance: Any) -> None:
    """Instrument ``governance`` when an application configured a provider (see ``configured_providers``).

    Called once by every Governance and AsyncGovernance as it is made.
    """
    tracer_provider, meter_provider = configured_providers()
    if tracer_provider is not None or meter_provider is not None:
        _install(governance, Telemetry(governance.backplane, tracer_provider, meter_provider))


def instrument(governance: Any, *, tracer_provider: Any = None, meter_provider: Any = None) -> bool:
    """Instrument (or re-instrument) an existing Governance or AsyncGovernance; True when it now records.

    Args:
        governance: a Governance or AsyncGovernance (instrumented or not).
        tracer_provider: the TracerProvider its spans go to, used as given (a no-op one too);
            None: the global one when an application set a real one, else no spans.
        meter_provider: the MeterProvider of its two instruments, likewise; None: the global
            one when set, else no metrics.

    With neither kind to record, ``governance`` is left (or made) uninstrumented and False is returned.
    """
    if tracer_provider is None or meter_provider is None:
        global_tracer, global_meter = configured_providers()
        tracer_provider = global_tracer if tracer_provider is None else tracer_provider
        meter_provider = global_meter if meter_provider is None else meter_provider
    if tracer_provider is None and meter_provider is None:
        uninstrument(governance)
        return False
    _install(governance, Telemetry(governance.backplane, tracer_provider, meter_provider))
    return True


def uninstrument(governance: Any) -> None:
    """Stop recording ``governance``'s operations: it runs the plain methods again."""
    governance.__dict__.pop("_telemetry", None)
    governance.__class__ = _base_class(governance)
