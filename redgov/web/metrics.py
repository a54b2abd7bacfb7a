"""Prometheus metrics of ``redgov serve`` at ``GET /metrics`` (no login; text exposition format).

``Metrics(governance)`` keeps a ``CollectorRegistry`` of its own (never prometheus-client's
global one, so several apps can live in one process) with:

- ``redgov_operations_total{operation,outcome}``: the Governance calls the server made for
  requests (``WebContext.act``): ``operation`` is transition, approve, reject,
  create_version, rollback; ``outcome`` is ``ok`` or the exception's class name;
- ``redgov_operation_seconds{operation}``: their latency (histogram);
- ``redgov_refusals_total{kind}``: the calls refused with a RedgovError, by its class;
- ``redgov_login_failures_total{via}``: wrong user names or passwords, ``via`` ``form`` (the login
  page) or ``api`` (HTTP Basic); alert on its rate against password guessing;
- ``redgov_throttled_total{reason}``: requests answered 429: ``login`` (a name or an address made
  to wait after failed logins; nothing was checked) or ``streams`` (a user with too many live
  streams open);

and, read from the backplane at scrape time:

- ``redgov_cache_enabled`` (1 with ``connect(cache=True)``, i.e. ``redgov serve --cache``) and,
  when it is, ``redgov_cache_hits_total``, ``redgov_cache_misses_total``,
  ``redgov_cache_invalidations_total``, ``redgov_cache_resets_total``, ``redgov_cache_entries``,
  ``redgov_cache_active`` (``Backplane.cache.stats()``);
- ``redgov_redis_retries_total``: attempts redis-py's ``Retry`` made again after a broken or
  timed-out connection (a command re-sent, a connect retried). redis-py has no hook for it,
  so the client's Retry is replaced by ``CountingRetry``, a subclass with the same backoff,
  number of retries and errors that counts (a shared counter survives the copies redis-py
  makes per connection). Absent when the client has no redis-py Retry. Not counted: the
  re-sends of a Cluster call refused while its slot migrates (TRYAGAIN), which the
  Backplane makes with a Retry of its own per call;
- ``redgov_live_clients``: the browsers following the live feed (Server-Sent Events), when the
  live hub tells.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from redis.retry import Retry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import RedgovError
from ..governance import Governance

if TYPE_CHECKING:
    from .app import WebContext

__all__ = ["CountingRetry", "Metrics", "RetryCounter", "count_retries", "routes"]

def _refusal_names(base: type[RedgovError] = RedgovError) -> frozenset[str]:
    names = {base.__name__}
    for sub in base.__subclasses__():
        names |= _refusal_names(sub)
    return frozenset(names)


#: the ``via`` labels of redgov_login_failures_total and the ``reason`` labels of redgov_throttled_total
LOGIN_VIAS = ("form", "api")
THROTTLE_REASONS = ("login", "streams")

#: latency buckets (seconds): a transition is about a millisecond on a local Redis
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RetryCounter:
    """A thread-safe count of retries (shared by every copy of one CountingRetry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class CountingRetry(Retry):
    """redis-py's ``Retry`` that counts each attempt it makes again (the failures it retries).

    Behaves like the Retry it was made from (same backoff, retries and supported errors);
    copies (redis-py deep-copies a client's Retry into every connection) share ``counter``.
    """

    def __init__(self, backoff: Any, retries: int, supported_errors: tuple[type[Exception], ...], *,
                 counter: RetryCounter) -> None:
        super().__init__(backoff, retries, supported_errors)
        self.counter = counter

    @classmethod
    def like(cls, template: Retry, counter: RetryCounter) -> CountingRetry:
        """A CountingRetry behaving as ``template``."""
        return cls(copy.deepcopy(template._backoff), template.get_retries(), tuple(template._supported_errors),
                   counter=counter)

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingRetry:
        return CountingRetry(copy.deepcopy(self._backoff, memo), self._retries, tuple(self._supported_errors),
                             counter=self.counter)

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> Any:
        retries = self.get_retries()
        failures = 0

        def counted(error: Exception, *rest: Any) -> Any:
            nonlocal failures
            failures += 1
            if retries < 0 or failures <= retries:  # another attempt follows
                self.counter.add()
            return fail(error, *rest)

        return super().call_with_retry(do, counted, is_retryable, with_failure_count)


def count_retries(client: Any) -> RetryCounter | None:
    """Make ``client``'s redis-py Retry count its retries; the counter (None: the client has no Retry).

    Idempotent: a client already counting keeps its counter (several apps on one Governance).
    """
    getter = getattr(client, "get_retry", None)
    current = getter() if callable(getter) else getattr(client, "retry", None)
    if isinstance(current, CountingRetry):
        return current.counter
    setter = getattr(client, "set_retry", None)
    if not isinstance(current, Retry) or not callable(setter):
        return None
    counter = RetryCounter()
    setter(CountingRetry.like(current, counter))
    return counter


def live_clients(hub: Any) -> int | None:
    """How many live-feed clients the hub has (None: no hub, or it does not tell)."""
    if hub is None:
        return None
    for name in ("client_count", "clients", "connected", "subscribers"):
        value = getattr(hub, name, None)
        if callable(value):
            try:
                value = value()
            except TypeError:
                continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return value
        if hasattr(value, "__len__"):
            return len(value)
    return None


class _Backplane(Collector):
    """What the registry reads at each scrape: cache counters, retries, live clients."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        cache = getattr(self.metrics.governance.backplane, "cache", None)
        yield GaugeMetricFamily("redgov_cache_enabled", "1 when get_state is served by the local cache "
                                "(redgov serve --cache), else 0", value=0 if cache is None else 1)
        if cache is not None:
            stats = cache.stats()
            for name, value, text in (
                    ("hits", stats.hits, "get_state calls answered by the local cache"),
                    ("misses", stats.misses, "get_state calls that went to Redis"),
                    ("invalidations", stats.invalidations, "invalidation messages received from Redis"),
                    ("resets", stats.resets, "times the invalidation stream was lost (the cache dropped)")):
                yield CounterMetricFamily(f"redgov_cache_{name}", text, value=value)
            yield GaugeMetricFamily("redgov_cache_entries", "states held by the local cache", value=stats.size)
            yield GaugeMetricFamily("redgov_cache_active", "1 while results are cached (invalidations subscribed)",
                                    value=1 if stats.active else 0)
        counter = self.metrics.retries
        if counter is not None:
            yield CounterMetricFamily("redgov_redis_retries", "attempts redis-py's Retry made again after a broken "
                                      "or timed-out connection (commands re-sent, connects retried)",
                                      value=counter.value)
        clients = live_clients(self.metrics.hub)
        if clients is not None:
            yield GaugeMetricFamily("redgov_live_clients", "browsers following the live feed (Server-Sent Events)",
                                    value=clients)


class Metrics:
    """The metrics of one app over ``governance`` (a registry of its own).

    Args:
        governance: the app's Governance; its client's Retry is made to count retries
            (``count_retries``).
    """

    def __init__(self, governance: Governance) -> None:
        self.governance = governance
        #: the live hub (``WebContext.hub``), asked for its number of clients at scrape time
        self.hub: Any = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.operations = Counter("redgov_operations", "Governance calls made for requests, by outcome "
                                  "(ok, or the exception's class name)", ["operation", "outcome"],
                                  registry=self.registry)
        self.seconds = Histogram("redgov_operation_seconds", "latency of the Governance calls made for requests",
                                 ["operation"], buckets=BUCKETS, registry=self.registry)
        self.refusals = Counter("redgov_refusals", "Governance calls refused, by exception class", ["kind"],
                                registry=self.registry)
        self.login_failures = Counter("redgov_login_failures", "failed logins (a wrong user name or password), "
                                      "by where: form (the login page) or api (HTTP Basic)", ["via"],
                                      registry=self.registry)
        self.throttled = Counter("redgov_throttled", "requests answered 429, by why: login (failed logins made "
                                 "the name or the address wait) or streams (too many live streams of one user)",
                                 ["reason"], registry=self.registry)
        for via in LOGIN_VIAS:  # every series there from the start (0), so rate() and alerts see the first one
            self.login_failures.labels(via)
        for reason in THROTTLE_REASONS:
            self.throttled.labels(reason)
        try:
            self.retries = count_retries(governance.backplane.client)
        except Exception:  # noqa: BLE001 - a client we cannot instrument still serves; retries go uncounted
            self.retries = None
        self.registry.register(_Backplane(self))

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        """Count one call (``WebContext.act``): ``outcome`` ``ok`` or the exception's class name."""
        self.operations.labels(operation, outcome).inc()
        self.seconds.labels(operation).observe(seconds)
        if outcome in _refusal_names():  # a RedgovError; not a connection failure
            self.refusals.labels(outcome).inc()

    def count_login_failure(self, via: str) -> None:
        """Count one wrong user name or password (``via``: form or api)."""
        self.login_failures.labels(via).inc()

    def count_throttled(self, reason: str) -> None:
        """Count one 429 answer (``reason``: login or streams)."""
        self.throttled.labels(reason).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def routes(ctx: WebContext) -> list[Route]:
    """``GET /metrics`` (no login)."""
    metrics: Metrics = ctx.metrics
    metrics.hub = ctx.hub

    async def scrape(request: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition)  # the cache's lock, never the event loop
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"])]
