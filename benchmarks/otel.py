"""What the OpenTelemetry instrumentation costs a transition, measured in one run against one server.

    python benchmarks/otel.py [--url redis://127.0.0.1:6379/0] [--n 5000] [--json]

Every member runs on one shared Backplane (one connection pool), each on its own
experiment cycling Running <-> Paused (no gates or policies); the members alternate
in blocks after a warm-up (``benchmarks/_util.py``). The baseline, "no
instrumentation code", is a Governance made with ``redgov.telemetry.attach`` skipped.

Rows (ratio = candidate median / baseline median):

- ``transition`` with opentelemetry-api installed and imported and the default
  (proxy, no-op) providers: what every user without a configured provider gets
  (target <= 1.03x, issue 11);
- informational: an A/A control, a second baseline Governance against the first:
  the noise floor of this run (the default provider runs the very code of the
  baseline, so its ratio differs from 1 by noise alone);
- informational: ``state()`` served by the local cache (``connect(cache=True)``,
  microseconds a call, so any per-call cost would show), default provider and A/A;
- informational: ``transition`` instrumented through the API's no-op providers
  (``instrument(gov, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())``:
  the cost the construction-time check avoids); instrumented with the SDK, spans to an
  in-memory exporter (cleared untimed before each call) and metrics to an in-memory
  reader; and the design not taken, every method wrapped at class creation by a
  wrapper that checks ``self._telemetry is None`` first (on ``transition`` and on the
  cached ``state()``).

Everything lives under a fresh ``bench-<uuid>`` prefix whose keys are deleted at the
end. Exit status 0 even when a target is missed (a report, not a test); 2 when
opentelemetry-api is not installed or the server cannot be reached.
"""

from __future__ import annotations

import functools
import gc
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

import redgov
import redgov.governance
from benchmarks._util import (
    bench_parser,
    delete_prefix,
    display_url,
    environment,
    measure,
    report_dict,
    row,
    run_and_print,
    to_running,
)
from redgov import Governance, LifecycleState
from redgov.telemetry import configured_providers, instrument, instrumented

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 5000
TARGET = 1.03
#: calls per block: small blocks interleave the members finely, so slow drift of the machine is shared
OTEL_BLOCK = 20
RUNNING, PAUSED = LifecycleState.RUNNING, LifecycleState.PAUSED
BASELINE = "no instrumentation code"


def _plain(backplane: redgov.Backplane) -> Governance:
    """A Governance made without the telemetry decision (what redgov was before the instrumentation)."""
    real = redgov.governance._attach_telemetry
    redgov.governance._attach_telemetry = lambda governance: None  # type: ignore[assignment]
    try:
        return Governance(backplane)
    finally:
        redgov.governance._attach_telemetry = real


def _checking(func: Callable[..., Any]) -> Callable[..., Any]:
    """The design not taken: a wrapper at class creation that checks an attribute on every call."""
    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._telemetry is None:
            return func(self, *args, **kwargs)
        raise AssertionError("the benchmark's checking wrapper never records")
    return wrapper


class _Checked(Governance):
    _telemetry = None
    transition = _checking(Governance.transition)  # type: ignore[assignment]
    state = _checking(Governance.state)  # type: ignore[assignment]


def _cycler(gov: Governance, experiment: str) -> Callable[[], object]:
    """Create ``experiment``, walk it to Running; a callable moving it Running <-> Paused, one move a call."""
    to_running(gov, experiment)
    state = [RUNNING]

    def move() -> object:
        target = PAUSED if state[0] is RUNNING else RUNNING
        moved = gov.transition(experiment, target, actor="bench")
        state[0] = target
        return moved

    return move


def _measure(group: dict[str, Callable[[], object]], n: int, block: int, warmup: int,
             before: dict[str, Callable[[], object]] | None = None) -> dict[str, list[int]]:
    """``measure`` with the garbage collector off while timing (as ``timeit`` does)."""
    gc.disable()
    try:
        return measure(group, n, block=block, warmup=warmup, before=before)
    finally:
        gc.enable()


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = OTEL_BLOCK) -> dict[str, Any]:
    """Every measurement; the report as a JSON-ready dict."""
    from opentelemetry import metrics, trace
    from opentelemetry.version import __version__ as api_version

    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.version import __version__ as sdk_version
    except ImportError:
        sdk_version = None

    if configured_providers() != (None, None):
        raise RuntimeError("a tracer or meter provider is configured in this process: the default row needs none")
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    raw = redis.Redis.from_url(url)
    backplane = redgov.connect(url, prefix=prefix)
    cached = redgov.connect(url, prefix=prefix, cache=True)
    warmup = min(n, max(2 * block, 400))
    notes = ["baseline: a Governance made with redgov.telemetry.attach skipped (no instrumentation code at all)",
             "redis-py >= 8 imports opentelemetry itself when it is installed, so 'api imported' is the "
             "state of every process that has it",
             f"members alternate in blocks of {block} calls; the garbage collector is off while timing"]
    try:
        server = raw.info("server")["redis_version"]
        plain, again = _plain(backplane), _plain(backplane)
        default = Governance(backplane)
        assert instrumented(default) is None and type(default) is Governance
        noop = Governance(backplane)
        instrument(noop, tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider())
        checked = _Checked(backplane)
        group: dict[str, Callable[[], object]] = {
            "plain": _cycler(plain, "plain"), "default": _cycler(default, "default"),
            "again": _cycler(again, "again"),
            "noop": _cycler(noop, "noop"), "checked": _cycler(checked, "checked")}
        before: dict[str, Callable[[], object]] = {}
        exporter = None
        if sdk_version is not None:
            exporter = InMemorySpanExporter()
            tracer_provider = TracerProvider(shutdown_on_exit=False)
            tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
            reader = InMemoryMetricReader()
            sdk = Governance(backplane)
            instrument(sdk, tracer_provider=tracer_provider,
                       meter_provider=MeterProvider(metric_readers=[reader], shutdown_on_exit=False))
            group["sdk"] = _cycler(sdk, "sdk")
            before["sdk"] = exporter.clear
        else:
            notes.append("opentelemetry-sdk is not installed: no SDK row")
        s = _measure(group, n, block, warmup, before)
        rows = [row("transition, opentelemetry-api, default no-op provider", s["default"], BASELINE, s["plain"],
                    TARGET),
                row("transition, A/A control: a second baseline", s["again"], BASELINE, s["plain"])]

        reads_plain, reads_again, reads_default = _plain(cached), _plain(cached), Governance(cached)
        reads_checked = _Checked(cached)
        assert instrumented(reads_default) is None
        reads_plain.create("read", actor="bench")
        reads = {"plain": lambda: reads_plain.state("read"), "default": lambda: reads_default.state("read"),
                 "again": lambda: reads_again.state("read"), "checked": lambda: reads_checked.state("read")}
        r = _measure(reads, n * 4, block * 4, warmup * 4)
        rows.append(row("state() cache hit, default no-op provider", r["default"], BASELINE, r["plain"]))
        rows.append(row("state() cache hit, A/A control", r["again"], BASELINE, r["plain"]))
        rows.append(row("transition, instrumented via the API's no-op providers", s["noop"], BASELINE, s["plain"]))
        if "sdk" in s:
            rows.append(row("transition, SDK: in-memory span exporter + metric reader", s["sdk"], BASELINE,
                            s["plain"]))
        rows.append(row("transition, attribute-check wrapper (not taken)", s["checked"], BASELINE, s["plain"]))
        rows.append(row("state() cache hit, attribute-check wrapper (not taken)", r["checked"], BASELINE,
                        r["plain"]))
        env = environment(f"Redis {server}", url=display_url(url), n=n, block=block, warmup=warmup,
                          opentelemetry_api=api_version, opentelemetry_sdk=sdk_version or "not installed")
        return report_dict("redgov OpenTelemetry instrumentation cost", env, rows, notes=notes)
    finally:
        try:
            delete_prefix(raw, prefix)
        except redis.ConnectionError:
            pass
        finally:
            backplane.close()
            cached.close()
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/otel.py"
    parser = bench_parser(prog, "Transition latency with the OpenTelemetry instrumentation off, on no-op "
                          "providers and on the SDK, interleaved in one run.", DEFAULT_URL, DEFAULT_N)
    parser.set_defaults(block=OTEL_BLOCK)
    args = parser.parse_args(argv)
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        print(f"{prog}: needs opentelemetry-api (pip install -e '.[otel]', or '.[dev]' for the SDK row too)",
              file=sys.stderr)
        return 2
    return run_and_print(prog, args.url, args.json, lambda: run(args.url, args.n, block=args.block))


if __name__ == "__main__":
    sys.exit(main())
