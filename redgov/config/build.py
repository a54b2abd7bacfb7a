"""``from_config``: a Governance on the backplane a configuration describes, with its SQL copy as archive."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ..backplane import Backplane
from ..connect import connect
from ..errors import ConfigError, ValidationError
from ..governance import Governance
from .load import load_config
from .model import GovernanceConfig

__all__ = ["from_config", "open_archive"]


def from_config(source_or_config: GovernanceConfig | str | os.PathLike[str] | Mapping[str, Any], *,
                client: Any = None, clock: Callable[[], datetime] | None = None, url: str | None = None,
                prefix: str | None = None, archive: Any = None) -> Governance:
    """A Governance built from a configuration: its gates, policies, initial state, auto-versioning,
    requireTelemetry and persistence settings.

    ``source_or_config`` is a GovernanceConfig, or what ``load_config`` reads (a file
    path, YAML/JSON text, a mapping). Without ``client`` it connects to ``url``, else
    ``config.url()``; with one (a redis.Redis or RedisCluster; not with ``url``) it
    wraps it. ``prefix`` replaces the config's ``keyPrefix``. ``clock`` is passed to
    Governance. ``archive`` is where history trimmed from Redis is read: an Archive
    object (``redgov.sql.SqlArchive``), a SQL url, or False for none; by default the
    config's ``persistence.export.url``, when set and its copy exists (a copy not
    made yet is skipped with a RuntimeWarning). Closing the Governance closes the
    backplane and the archive. Raises ConfigError for a bad configuration, or a SQL
    url without ``pip install 'redgov[sql]'``.
    """
    config = (source_or_config if isinstance(source_or_config, GovernanceConfig)
              else load_config(source_or_config))
    if client is not None and url is not None:
        raise ValidationError("from_config takes client or url, not both")
    the_prefix = config.prefix if prefix is None else prefix
    opened = None
    if archive is None and config.export_url:
        opened = open_archive(config.export_url, required=False, what="persistence.export.url")
    elif isinstance(archive, str):
        opened = open_archive(archive, required=True, what="archive")
    the_archive = opened if archive is None or archive is False or isinstance(archive, str) else archive
    retain = config.retain_history
    try:
        if client is not None:
            backplane = Backplane(client, prefix=the_prefix, optimistic_concurrency=config.optimistic_concurrency,
                                  retain_history=retain, archive=the_archive)
        else:
            options: dict[str, Any] = {} if config.optimistic_concurrency else {"optimistic_concurrency": False}
            if retain is not None:
                options["retain_history"] = retain
            try:
                backplane = connect(config.url() if url is None else url, prefix=the_prefix, archive=the_archive,
                                    **options)
            except ValidationError as exc:
                raise ConfigError(f"persistence: {exc}") from None
    except BaseException:
        if opened is not None:
            opened.close()
        raise
    try:
        return Governance(backplane, rules=config.lifecycle(), gates=config.gates(), policies=config.policies(),
                          initial_state=config.initial_state, auto_versioning=config.auto_versioning,
                          require_telemetry=config.require_telemetry, clock=clock)
    except BaseException as exc:
        if client is None:
            backplane.close()  # the client, and the archive with it
        elif opened is not None:
            opened.close()  # the caller's client stays open
        if isinstance(exc, ValidationError):
            raise ConfigError(str(exc)) from None
        raise


def open_archive(url: str, *, required: bool, what: str = "archive") -> Any:
    """A ``redgov.sql.SqlArchive`` on the SQL copy at ``url`` (named ``what`` in errors).

    ConfigError when SQLAlchemy is missing. When the copy cannot be opened (not
    exported yet, unreachable): the SqlCopyError if ``required``, else None with a
    RuntimeWarning (history reads then use Redis only).
    """
    try:
        from ..sql import SqlArchive
    except (ImportError, ConfigError) as exc:
        raise ConfigError(f"{what}: reading history from the SQL copy needs SQLAlchemy: "
                          f"pip install 'redgov[sql]' ({exc})") from None
    try:
        return SqlArchive(url)
    except ConfigError as exc:  # SqlCopyError: no copy there yet, unreachable, another schema
        if required:
            raise
        warnings.warn(f"history reads use Redis only: {exc}", RuntimeWarning, stacklevel=3)
        return None
