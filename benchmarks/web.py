"""What the operator view (``redgov serve``) costs, measured in one run against one server.

    python benchmarks/web.py [--url redis://127.0.0.1:6379/0] [--n 2000] [--json]

Two HTTP servers run as subprocesses of this script (uvicorn on free 127.0.0.1 ports, so the
client side here does not share a GIL with them), both on one fresh ``bench-<uuid>`` prefix:

- ``redgov``: ``create_app(governance, users, secret)``, the app ``redgov serve`` runs, with its
  live feed;
- ``bare``: a Starlette app with no middleware and two routes, the least an HTTP endpoint in
  front of Redis can do: ``GET /raw/<name>`` answers the experiment's state hash (one
  ``HGETALL`` by redis-py) as JSON, ``POST /move/<name>`` runs ``Governance.transition`` in the
  thread pool and answers its record.

One keep-alive HTTP client per server (httpx2); the members alternate in blocks after a warm-up
(``benchmarks/_util.py``). Rows (ratio = candidate median / baseline median):

- ``GET /api/experiments/<name>`` (HTTP Basic, the pair verified before) against ``GET /raw``:
  authentication, the role check, routing, the security headers and msgspec encoding on top of
  the least HTTP read of Redis (target <= 1.5x);
- ``POST /api/experiments/<name>/transition`` Running <-> Paused against ``POST /move``, the same
  Governance call: what the JSON API adds to a write (target <= 1.3x);
- informational: ``Users.authenticate`` answered from the verified-pairs memory against one
  argon2id verification (argon2-cffi's defaults), what each Basic request would cost without it;
- live delivery, paired per transition: from calling ``transition`` (on a Governance in this
  process) to the event's arrival at an SSE client of ``GET /events``, against the arrival of
  the same entry at a raw ``XREAD BLOCK`` on the scope log in a thread of this process (the
  least a push fed by the stream can take); once with 20 ms between an arrival and the next move
  (longer than the hub's 10 ms linger: each event travels alone) and once with 2 ms (a busy feed,
  which the hub batches, waiting up to 10 ms).

Exit status 0 even when a target is missed (a report, not a test); 2 when the server cannot be
reached or the web extra is not installed.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

import redgov
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

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 2000
READ_TARGET = 1.5
WRITE_TARGET = 1.3
RUNNING, PAUSED = LifecycleState.RUNNING, LifecycleState.PAUSED
USER, PASSWORD = "bench", "bench-password"
SECRET = "benchmark-secret-" + "x" * 32
#: seconds to wait for a server to answer, an event to arrive
WAIT_S = 20.0
#: pauses between live moves: longer than the hub's linger (each event alone), and shorter
LINGER_GAP, BUSY_GAP = 0.02, 0.002

SERVE = """
import json, socket, sys
import uvicorn
url, prefix, users, secret, which = sys.argv[1:6]
import redgov
from redgov import Governance
gov = Governance(redgov.connect(url, prefix=prefix))
if which == "redgov":
    from redgov.web import create_app
    app = create_app(gov, users, secret)
else:
    import redis, msgspec
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from redgov.keys import Scope
    raw = redis.Redis.from_url(url, decode_responses=True)
    scope = Scope(prefix)

    def read(request):
        return JSONResponse(raw.hgetall(scope.experiment(request.path_params["name"]).state))

    async def move(request):
        body = await request.json()
        done = await run_in_threadpool(gov.transition, request.path_params["name"], body["to"], actor="bench")
        return Response(msgspec.json.encode(done), media_type="application/json")

    app = Starlette(routes=[Route("/raw/{name}", read), Route("/move/{name}", move, methods=["POST"])])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio turns Nagle off
sock.bind(("127.0.0.1", 0))
print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none",
                              timeout_graceful_shutdown=2)).run(sockets=[sock])
"""


@contextmanager
def _server(which: str, url: str, prefix: str, users: Path) -> Iterator[str]:
    """A server subprocess (``redgov`` or ``bare``); yields its base URL, stops it afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE, url, prefix, str(users), SECRET, which],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        if not first:
            raise RuntimeError(f"the {which} server did not start: {proc.stderr.read() if proc.stderr else ''}")
        port = json.loads(first)["port"]
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the {which} server does not answer") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _cycle(post: Callable[[str], Any], gov: Governance, experiment: str) -> Callable[[], object]:
    """Create ``experiment`` and walk it to Running; a callable asking ``post(target)`` to move it
    Running <-> Paused, one move a call (each answer must be 200)."""
    to_running(gov, experiment)
    state = [RUNNING]

    def move() -> object:
        target = PAUSED if state[0] is RUNNING else RUNNING
        answer = post(target.value)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")
        state[0] = target
        return answer

    return move


def _login(client: Any) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("no CSRF token on /login")
    done = client.post("/login", data={"csrf": token.group(1), "username": USER, "password": PASSWORD, "next": "/"})
    if done.status_code != 303:
        raise RuntimeError(f"login failed: {done.status_code}")


def _sse_arrivals(base: str, out: queue.Queue[tuple[str, str, float]], ready: threading.Event,
                  stop: threading.Event) -> None:
    """Read ``GET /events?experiment=live`` (logged in); put (transition id, log entry id,
    perf_counter) for each transition event."""
    import httpx2

    with httpx2.Client(base_url=base, follow_redirects=False, timeout=httpx2.Timeout(WAIT_S, read=None)) as client:
        _login(client)
        with client.stream("GET", "/events", params={"experiment": "live"}) as stream:
            ready.set()
            for line in stream.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("data:"):
                    at = time.perf_counter()
                    data = json.loads(line[5:])
                    if data["kind"] == "transition":
                        out.put((data["record"]["transition_id"], data["id"], at))


def _xread_arrivals(url: str, log: str, out: queue.Queue[tuple[str, float]], ready: threading.Event,
                    stop: threading.Event) -> None:
    """XREAD BLOCK on ``log`` from its end; put (entry id, perf_counter) for each entry."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        last = "$"
        ready.set()
        while not stop.is_set():
            got = client.xread({log: last}, block=200, count=100)
            now = time.perf_counter()
            for _key, entries in got or ():
                for entry_id, _fields in entries:
                    out.put((entry_id, now))
                    last = entry_id
    finally:
        client.close()


def _live(url: str, base: str, gov: Governance, n: int, gaps: Sequence[float]) -> list[tuple[list[int], list[int]]]:
    """Paired delivery latencies (ns), SSE client and raw XREAD, from calling transition to arrival:
    ``n`` transitions for each pause in ``gaps`` (seconds between one arrival and the next move)."""
    from redgov.keys import Scope

    log = Scope(gov.backplane.prefix).log
    sse: queue.Queue[tuple[str, str, float]] = queue.Queue()
    raw: queue.Queue[tuple[str, float]] = queue.Queue()
    stop = threading.Event()
    readers = []
    for target, args in ((_sse_arrivals, (base, sse)), (_xread_arrivals, (url, log, raw))):
        ready = threading.Event()
        thread = threading.Thread(target=target, args=(*args, ready, stop), daemon=True)
        thread.start()
        if not ready.wait(WAIT_S):
            raise RuntimeError(f"{target.__name__} did not start")
        readers.append(thread)
    time.sleep(0.5)  # the stream's response is under way before the first move

    _arrivals(sse, raw, to_running(gov, "live").transition_id, 0.0)
    results = []
    state = RUNNING
    try:
        for gap in gaps:
            sse_ns: list[int] = []
            raw_ns: list[int] = []
            for _ in range(n):
                time.sleep(gap)
                state = PAUSED if state is RUNNING else RUNNING
                started = time.perf_counter()
                done = gov.transition("live", state, actor="bench")
                pushed, read = _arrivals(sse, raw, done.transition_id, started)
                sse_ns.append(pushed)
                raw_ns.append(read)
            results.append((sse_ns, raw_ns))
    finally:
        stop.set()
        gov.transition("live", PAUSED if state is RUNNING else RUNNING, actor="bench")  # wakes the readers
        for thread in readers:
            thread.join(2)
    return results


def _arrivals(sse: queue.Queue[tuple[str, str, float]], raw: queue.Queue[tuple[str, float]], transition_id: str,
              started: float) -> tuple[int, int]:
    """ns from ``started`` to the arrival of transition ``transition_id`` at the SSE client and of
    its log entry at the raw reader (earlier events and entries are passed over)."""
    try:
        while True:
            tid, entry, pushed = sse.get(timeout=WAIT_S)
            if tid == transition_id:
                break
        while True:
            got, read = raw.get(timeout=WAIT_S)
            if got == entry:
                break
    except queue.Empty:
        raise RuntimeError(f"transition {transition_id} did not arrive within {WAIT_S} s") from None
    return int((pushed - started) * 1e9), int((read - started) * 1e9)


def _authenticate(users_file: Path, n: int) -> tuple[list[int], list[int]]:
    """``Users.authenticate`` from memory, and one argon2id verification, ``n`` (and n/100) samples."""
    from argon2 import PasswordHasher

    from redgov.web import Users

    users = Users(users_file)
    assert users.authenticate(USER, PASSWORD) is not None
    hasher, stored = PasswordHasher(), PasswordHasher().hash(PASSWORD)
    remembered = measure({"m": lambda: users.authenticate(USER, PASSWORD)}, n)["m"]
    argon = measure({"a": lambda: hasher.verify(stored, PASSWORD)}, max(5, n // 100), block=5, warmup=2)["a"]
    return remembered, argon


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = 50) -> dict[str, Any]:
    """Every measurement; the report as a JSON-ready dict."""
    import httpx2

    from redgov.web import add_user

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(url)
    gov = Governance(redgov.connect(url, prefix=prefix))
    try:
        server = client.info("server")["redis_version"]
        with tempfile.TemporaryDirectory() as folder:
            users = Path(folder) / "users.json"
            add_user(users, USER, "operator", PASSWORD)
            with _server("redgov", url, prefix, users) as ours, _server("bare", url, prefix, users) as bare, \
                    httpx2.Client(base_url=ours, auth=(USER, PASSWORD), timeout=WAIT_S) as api, \
                    httpx2.Client(base_url=bare, timeout=WAIT_S) as plain:
                gov.create("read", actor="bench", configuration={"rollout": {"percent": 5}})
                api.get("/api/experiments/read").raise_for_status()  # the pair verified (argon2) once
                reads = measure({"api": lambda: api.get("/api/experiments/read").raise_for_status(),
                                 "raw": lambda: plain.get("/raw/read").raise_for_status()}, n, block=block)
                writes = measure({
                    "api": _cycle(lambda to: api.post("/api/experiments/api-move/transition", json={"to": to}),
                                  gov, "api-move"),
                    "raw": _cycle(lambda to: plain.post("/move/bare-move", json={"to": to}), gov, "bare-move"),
                }, n, block=block)
                live = _live(url, ours, gov, max(50, n // 10), (LINGER_GAP, BUSY_GAP))
            remembered, argon = _authenticate(users, n)
        rows = [
            row("GET /api/experiments/<name> (Basic)", reads["api"], "bare Starlette route: HGETALL", reads["raw"],
                READ_TARGET),
            row("POST /api/.../transition (Basic)", writes["api"], "bare route: gov.transition", writes["raw"],
                WRITE_TARGET),
            row("live, a move every 20+ ms: -> SSE client", live[0][0], "-> raw XREAD BLOCK", live[0][1]),
            row("live, a move every 2+ ms: -> SSE client", live[1][0], "-> raw XREAD BLOCK", live[1][1]),
            row("Users.authenticate, verified pair", remembered, "argon2id verify (defaults)", argon),
        ]
        env = environment(f"Redis {server}", url=display_url(url), n=n, block=block)
        notes = ["servers: uvicorn subprocesses on 127.0.0.1; clients: httpx2 with keep-alive, this process",
                 f"live rows: {len(live[0][0])} transitions each, one at a time, from calling transition to "
                 "its log entry's arrival at that reader; the next move is made that many ms after the arrival. "
                 "The hub waits 10 ms after a read that found entries (batching a busy feed), so a feed busier "
                 "than one move per 10 ms waits up to that"]
        return report_dict("redgov operator view: HTTP and live-feed cost", env, rows, notes=notes)
    finally:
        try:
            delete_prefix(client, prefix)
        except redis.ConnectionError:
            pass
        finally:
            gov.close()
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/web.py"
    parser = bench_parser(prog, "The JSON API and the live feed of redgov serve against bare Starlette routes "
                          "and raw XREAD, interleaved in one run.", DEFAULT_URL, DEFAULT_N)
    parser.set_defaults(block=50)
    args = parser.parse_args(argv)
    try:
        import httpx2  # noqa: F401
        import uvicorn  # noqa: F401

        import redgov.web  # noqa: F401
    except ImportError as missing:
        print(f"{prog}: needs the web extra and httpx2 (pip install -e '.[dev]'): {missing}", file=sys.stderr)
        return 2
    return run_and_print(prog, args.url, args.json, lambda: run(args.url, args.n, block=args.block))


if __name__ == "__main__":
    sys.exit(main())
