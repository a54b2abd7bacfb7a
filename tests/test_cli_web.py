"""``redgov users add|list|remove`` and ``redgov serve`` as a user runs them: subprocesses for what only a real
process shows (stdin passwords, file modes, a server answering on a port, SIGINT), ``main()``
in-process for the refusals that happen before anything is served."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

import redgov
from redgov.cli import main
from redgov.web import add_user
from redgov.web import users as users_module

from .conftest import delete_prefix

ENV = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_WEB_SECRET", "NO_COLOR")}


def redgov_cli(cwd: Path, *args: str, stdin: str | None = None, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "redgov", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=60, env=ENV, check=False)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_users_add_reads_the_password_from_stdin_and_list_shows_no_hashes(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    added = redgov_cli(tmp_path, "users", "add", "ana", "--role", "operator", "--users", str(users),
                       stdin="s3cret pw\n")
    assert added.stdout == f"added user ana (operator) in {users}\n"
    assert "s3cret" not in added.stdout + added.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    entry = json.loads(users.read_text())["users"]["ana"]
    assert entry["roles"] == ["operator"] and "role" not in entry and entry["hash"].startswith("$argon2id$")
    assert PasswordHasher().verify(entry["hash"], "s3cret pw")  # the whole line, inner space included

    again = redgov_cli(tmp_path, "users", "add", "ana", "--role", "viewer", "--users", str(users), "--json",
                       stdin="another\r\n")
    assert json.loads(again.stdout) == {"user": "ana", "role": "viewer", "roles": ["viewer"], "replaced": True,
                                        "file": str(users)}
    document = json.loads(users.read_text())["users"]
    assert list(document) == ["ana"] and document["ana"]["roles"] == ["viewer"]
    assert PasswordHasher().verify(document["ana"]["hash"], "another")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600

    listed = redgov_cli(tmp_path, "users", "list", "--users", str(users)).stdout
    assert listed.splitlines() == ["user  roles", "----  ------", "ana   viewer"]


def test_users_refuse_empty_passwords_and_list_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, cheap_users: Path) -> None:
    users = str(cheap_users)

    def run(*args: str, stdin: str = "", code: int = 0) -> dict[str, Any]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        assert main(["--json", "users", *args]) == code, args
        return dict(json.loads(capsys.readouterr().out))

    before = cheap_users.read_bytes()
    for given in ("\n", "", "   \n"):
        refused = run("add", "bob", "--role", "viewer", "--users", users, stdin=given, code=2)
        assert refused["error"] == "ValidationError" and "password must not be empty" in refused["message"]
    no_permission = run("add", "bob", "--role", "admin", "--users", users, stdin="x\n", code=2)
    assert no_permission["error"] == "ValidationError"
    assert "admin: none of them is one of viewer, approver, operator" in no_permission["message"]
    assert cheap_users.read_bytes() == before

    assert run("add", "bea", "--role", "approver", "--users", users, stdin="no newline")["replaced"] is False
    assert users_module.Users(users).authenticate("bea", "no newline") is not None
    listed = run("list", "--users", users)
    assert listed["users"] == [{"name": "bea", "role": "approver", "roles": ["approver"]},
                               {"name": "olga", "role": "operator", "roles": ["operator"]}]
    assert listed["count"] == 2 and "$argon2" not in json.dumps(listed)
    assert run("list", "--users", str(tmp_path / "none.json"), code=2)["error"] == "ConfigError"


def test_users_add_takes_custom_roles_beside_exactly_one_permission_role(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cheap_users: Path) -> None:
    users = str(cheap_users)
    asked: list[str] = []
    monkeypatch.setattr("redgov.cli.web._password", lambda name: asked.append(name) or "pw")

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        assert main(["--json", "users", *args]) == code, args
        return dict(json.loads(capsys.readouterr().out))

    added = run("add", "sam", "--role", "sre", "--role", "operator", "--role", "release-manager", "--role", "sre",
                "--users", users)
    assert added == {"user": "sam", "role": "operator", "roles": ["operator", "sre", "release-manager"],
                     "replaced": False, "file": users}
    assert json.loads(cheap_users.read_text())["users"]["sam"]["roles"] == ["operator", "sre", "release-manager"]
    assert users_module.Users(users).get("sam") == users_module.User("sam", users_module.Role.OPERATOR,
                                                                      ("sre", "release-manager"))
    assert run("add", "sam", "--role", "Approver", "--users", users)["roles"] == ["approver"]  # replaced, case folded

    before, asked_before = cheap_users.read_bytes(), len(asked)
    refusals = {
        ("--role", "sre"): "roles sre: none of them is one of viewer, approver, operator",
        ("--role", "viewer", "--role", "operator"): "roles viewer and operator given together",
        ("--role", "operator", "--role", ""): "a role name must not be empty",
        ("--role", "operator", "--role", "on call"): "contains whitespace at character 3 (U+0020 SPACE)",
        ("--role", "operator", "--role", "sre\u200b"):
            "invisible format character at character 4 (U+200B ZERO WIDTH SPACE)",
        ("--role", "operator", "--role", "s\u202ere"): "(U+202E RIGHT-TO-LEFT OVERRIDE)",
        ("--role", "operator", "--role", "s\tre"): "contains whitespace at character 2 (U+0009)",
        ("--role", "operator", "--role", "sre\x07"): "a control character at character 4 (U+0007)",
    }
    for roles, message in refusals.items():
        refused = run("add", "zed", *roles, "--users", users, code=2)
        assert refused["error"] == "ValidationError" and message in refused["message"], (roles, refused)
    assert cheap_users.read_bytes() == before
    assert len(asked) == asked_before  # refused before the password was asked for

    main(["users", "list", "--users", users])
    assert capsys.readouterr().out.splitlines() == [
        "user  roles", "----  --------", "olga  operator", "sam   approver"]
    run("add", "sam", "--role", "operator", "--role", "sre", "--users", users)
    main(["users", "list", "--users", users])
    assert capsys.readouterr().out.splitlines()[-1] == "sam   operator, sre"


def test_users_remove_ends_the_user_and_refuses_an_unknown_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cheap_users: Path) -> None:
    users = str(cheap_users)
    add_user(cheap_users, "sam", ["operator", "sre"], "pw")
    assert main(["users", "remove", "sam", "--users", users]) == 0
    assert capsys.readouterr().out == f"removed user sam from {users}; its logins end at their next request\n"
    assert list(json.loads(cheap_users.read_text())["users"]) == ["olga"]
    assert stat.S_IMODE(cheap_users.stat().st_mode) == 0o600

    before = cheap_users.read_bytes()
    assert main(["--json", "users", "remove", "sam", "--users", users]) == 2
    refused = json.loads(capsys.readouterr().out)
    assert refused["error"] == "UsageError" and "there is no user 'sam' in" in refused["message"]
    assert "nothing was changed" in refused["message"]
    assert cheap_users.read_bytes() == before
    assert main(["--json", "users", "remove", "olga", "--users", users]) == 0
    assert json.loads(capsys.readouterr().out) == {"user": "olga", "removed": True, "file": users}
    assert json.loads(cheap_users.read_text()) == {"users": {}}
    assert main(["--json", "users", "remove", "x", "--users", str(tmp_path / "none.json")]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "ConfigError"


def test_users_files_of_before_custom_roles_are_read_listed_and_rewritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cheap_users: Path) -> None:
    old = tmp_path / "old.json"
    hashed = users_module._HASHER.hash("old-pw")
    old.write_text(json.dumps({"users": {"ana": {"role": "operator", "hash": hashed},
                                         "ben": {"role": "viewer", "hash": hashed}}}))
    old.chmod(0o600)
    assert main(["--json", "users", "list", "--users", str(old)]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == [
        {"name": "ana", "role": "operator", "roles": ["operator"]},
        {"name": "ben", "role": "viewer", "roles": ["viewer"]}]
    assert users_module.Users(old).authenticate("ana", "old-pw") == users_module.User("ana", users_module.Role.OPERATOR)
    assert main(["users", "remove", "ben", "--users", str(old)]) == 0
    capsys.readouterr()
    assert json.loads(old.read_text()) == {"users": {"ana": {"roles": ["operator"], "hash": hashed}}}  # rewritten


@pytest.fixture
def cheap_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    path = tmp_path / "users.json"
    add_user(path, "olga", "operator", "operator-pw")
    return path


@pytest.fixture
def seeded(redis_url: str, prefix: str) -> Iterator[str]:
    with redgov.Governance(redgov.connect(redis_url, prefix=prefix)) as gov:
        gov.create("checkout", actor="seed")
        yield prefix
        delete_prefix(gov.backplane.client, prefix)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.read().decode()


def _raw(port: int, target: str, host: str = "127.0.0.1", headers: str = "") -> str:
    """An HTTP request sent as written (no client normalizes the ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def test_serve_answers_metrics_and_the_api_and_stops_on_sigint(tmp_path: Path, redis_url: str, seeded: str,
                                                              cheap_users: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "redgov", "--url", redis_url, "--prefix", seeded, "serve",
                                "--users", str(cheap_users), "--port", "0"], cwd=tmp_path, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "redgov serve printed nothing in 30 s"
        line = process.stdout.readline()
        assert line.startswith("redgov serve: http://127.0.0.1:") and "Ctrl-C stops" in line, line
        url = line.split()[2]
        port = int(url.rstrip("/").rsplit(":", 1)[1])

        status, text = _get(url + "metrics")
        assert status == 200 and "redgov_operations_total" in text and "redgov_cache_enabled 0.0" in text
        token = base64.b64encode(b"olga:operator-pw").decode()
        status, text = _get(url + "api/experiments", {"Authorization": f"Basic {token}"})
        assert status == 200
        assert json.loads(text) == [{"experiment": "checkout", "tenant": None, "environment": None, "state": "Draft"}]
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(url + "api/experiments")
        assert refused.value.code == 401
        refused.value.close()
        for target in ("/static/../app.py", "/static/..%2Fapp.py", "/static/../../cli/web.py"):
            answer = _raw(port, target)
            assert not answer.startswith("HTTP/1.1 200") and "def create_app" not in answer, (target, answer[:80])
        # on loopback only loopback host names are answered (a DNS-rebound name is not)
        for host in ("localhost", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            assert _raw(port, "/metrics", host).startswith("HTTP/1.1 200"), host
        assert _raw(port, "/metrics", "evil.example").startswith("HTTP/1.1 400")
        # X-Forwarded-For is not believed without --trusted-proxy: the guesses count for this address
        wrong = base64.b64encode(b"olga:guess").decode()
        statuses = [_raw(port, "/api/whoami", headers=f"Authorization: Basic {wrong}\r\n"
                                                        f"X-Forwarded-For: 10.0.0.{k}\r\n")[9:12] for k in range(6)]
        assert statuses == ["401"] * 5 + ["429"], statuses
        secret = Path(str(cheap_users) + ".secret")
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text().strip()) >= 64
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        finally:
            process.kill()  # nothing when it already stopped
            _, stderr = process.communicate(timeout=10)  # and the pipes are closed
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Application shutdown complete" in stderr


def _serve(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["--url", "memory://", "--json", "serve", "--port", "0", *args])
    return code, json.loads(capsys.readouterr().out)


def test_serve_refuses_before_serving(tmp_path: Path, cheap_users: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDGOV_WEB_SECRET", raising=False)
    users = str(cheap_users)
    code, error = _serve(capsys, "--users", users, "--host", "0.0.0.0")
    assert code == 2 and error["error"] == "UsageError" and "no TLS" in error["message"]
    assert "--allow-remote" in error["message"]

    # --allow-remote needs the Host names clients use (else any Host is answered: DNS rebinding)
    for args in (("--allow-remote",), ("--host", "0.0.0.0", "--allow-remote")):
        code, error = _serve(capsys, "--users", users, *args)
        assert code == 2 and error["error"] == "UsageError" and "--allowed-host" in error["message"], error
        assert "DNS rebinding" in error["message"]
    for name in ("ops.example:443", "*", "https://ops.example", "ops example", ""):
        code, error = _serve(capsys, "--users", users, "--allow-remote", "--allowed-host", name)
        assert code == 2 and error["error"] == "UsageError" and "--allowed-host" in error["message"], (name, error)

    code, error = _serve(capsys, "--users", str(tmp_path / "none.json"))
    assert code == 2 and error["error"] == "ConfigError" and "redgov users add" in error["message"]

    open_secret = tmp_path / "open.secret"
    open_secret.write_text("x" * 64)
    open_secret.chmod(0o644)
    code, error = _serve(capsys, "--users", users, "--secret-file", str(open_secret))
    assert code == 2 and error["error"] == "ConfigError" and f"chmod 600 {open_secret}" in error["message"]

    good = tmp_path / "good.secret"
    good.write_text("z" * 64)
    good.chmod(0o600)
    link = tmp_path / "link.secret"
    link.symlink_to(good)
    code, error = _serve(capsys, "--users", users, "--secret-file", str(link))
    assert code == 2 and "symbolic link" in error["message"]
    if os.geteuid() == 0:  # only root can give a file to another user (the CI runs as root)
        foreign = tmp_path / "foreign.secret"
        foreign.write_text("f" * 64)
        foreign.chmod(0o600)
        os.chown(foreign, 65534, 65534)
        code, error = _serve(capsys, "--users", users, "--secret-file", str(foreign))
        assert code == 2 and "belongs to another user" in error["message"]

    short = tmp_path / "short.secret"
    short.write_text("too short")
    short.chmod(0o600)
    code, error = _serve(capsys, "--users", users, "--secret-file", str(short))
    assert code == 2 and "at least 32 characters" in error["message"]

    monkeypatch.setenv("REDGOV_WEB_SECRET", "from the environment, short")
    code, error = _serve(capsys, "--users", users)
    assert code == 2 and "at least 32 characters" in error["message"]
    assert not Path(users + ".secret").exists()  # the environment's secret was used, no file made

    monkeypatch.delenv("REDGOV_WEB_SECRET")
    Path(users + ".secret").write_text("y" * 64)
    Path(users + ".secret").chmod(0o640)
    code, error = _serve(capsys, "--users", users)
    assert code == 2 and "open to group or others" in error["message"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code = main(["--url", "memory://", "serve", "--users", users, "--port", str(taken.getsockname()[1])])
        assert code == 3 and "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_serve_with_allow_remote_answers_only_the_allowed_host_names(tmp_path: Path, redis_url: str, seeded: str,
                                                                     cheap_users: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "redgov", "--url", redis_url, "--prefix", seeded, "serve",
                                "--users", str(cheap_users), "--port", "0", "--allow-remote", "--secure-cookies",
                                "--allowed-host", "Ops.Example", "--allowed-host", "[2001:db8::1]",
                                "--allowed-host", "192.0.2.10"],
                               cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "redgov serve printed nothing in 30 s"
        url = process.stdout.readline().split()[2]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for host in ("ops.example", "OPS.EXAMPLE:443", "[2001:db8::1]:8765", "192.0.2.10", "localhost", "127.0.0.1",
                     f"[::1]:{port}"):
            assert _raw(port, "/metrics", host).startswith("HTTP/1.1 200"), host
        for host in ("evil.example", "ops.example.evil.example", "192.0.2.11", "ops.example@evil.example", ""):
            answer = _raw(port, "/metrics", host)
            assert answer.startswith("HTTP/1.1 400") and "redgov_operations" not in answer, host
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        finally:
            process.kill()
            _, stderr = process.communicate(timeout=10)
    assert code == 0 and "Traceback" not in stderr, stderr


def test_serve_help_names_the_allowed_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allowed-host NAME" in text and "DNS rebinding" in text
    assert "--allow-remote refuses to start without --allowed-host" in text
