"""The text formats inside configuration values: durations, times of day, Redis connection strings."""

from __future__ import annotations

import re
from datetime import time, timedelta
from urllib.parse import quote, urlencode

__all__ = ["DURATION_RE", "REDIS_SCHEMES", "TIME_OF_DAY_RE", "parse_duration", "parse_time_of_day", "redis_url"]

#: .NET TimeSpan text: ``[d.]hh:mm:ss[.fffffff]``
DURATION_RE = r"^(?:(\d+)\.)?([01]?\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{1,7}))?$"
#: ``HH:MM`` or ``HH:MM:SS`` (the hour may have one digit)
TIME_OF_DAY_RE = r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"
#: the URL schemes a ``type: redis`` connection string may have
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def parse_duration(text: str) -> timedelta:
    """A .NET TimeSpan string ``[d.]hh:mm:ss[.fffffff]`` (``text``) as a timedelta; ValueError otherwise."""
    match = re.match(DURATION_RE, text)
    if match is None:
        raise ValueError(f"expected a duration hh:mm:ss, got {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=int(seconds),
                     microseconds=int((fraction or "0").ljust(6, "0")[:6]))


def parse_time_of_day(text: str) -> time:
    """A time of day ``HH:MM[:SS]`` (``text``, the hour may have one digit); ValueError otherwise."""
    if re.match(TIME_OF_DAY_RE, text) is None:
        raise ValueError(f"expected a time of day HH:MM or HH:MM:SS, got {text!r}")
    return time.fromisoformat(text if len(text.split(":")[0]) == 2 else "0" + text)


def redis_url(connection_string: str) -> str:
    """A redis:// URL for ``connection_string``: a URL, or a StackExchange-style ``host:port[,option=value...]``.

    Options understood: ``password``, ``user``, ``ssl``, ``defaultDatabase``, ``name``,
    ``connectTimeout`` and ``syncTimeout`` (ms); others are ignored. ValueError when
    the text is neither.
    """
    text = connection_string.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in REDIS_SCHEMES:
            raise ValueError(f"the URL scheme must be one of {', '.join(REDIS_SCHEMES)}, got {connection_string!r}")
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    endpoints = [p for p in parts if "=" not in p]
    options = {k.strip().lower(): v.strip() for k, v in (p.split("=", 1) for p in parts if "=" in p)}
    if len(endpoints) != 1:
        raise ValueError(f"expected one host:port (or a redis:// URL; redis+cluster:// for a cluster), "
                         f"got {connection_string!r}")
    host, port = _endpoint(endpoints[0], connection_string)
    database = options.get("defaultdatabase", "0")
    if not database.isdigit():
        raise ValueError(f"defaultDatabase must be a number, got {database!r} in {connection_string!r}")
    scheme = "rediss" if options.get("ssl", "false").lower() == "true" else "redis"
    user, password = options.get("user"), options.get("password")
    auth = ""
    if user or password:
        auth = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "") + "@"
    query = {}
    if options.get("name"):
        query["client_name"] = options["name"]
    for option, param in (("connecttimeout", "socket_connect_timeout"), ("synctimeout", "socket_timeout")):
        if options.get(option, "").isdigit():
            query[param] = f"{int(options[option]) / 1000:g}"
    return f"{scheme}://{auth}{host}:{port}/{int(database)}" + (f"?{urlencode(query)}" if query else "")


def _endpoint(text: str, whole: str) -> tuple[str, int]:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"expected host:port, got {whole!r}")
    port = int(match.group(2) or 6379)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range in {whole!r}")
    return match.group(1), port
