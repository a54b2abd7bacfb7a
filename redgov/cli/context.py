"""Where a command runs: the url, prefix, scope and config, and the Governance built from them.

The URL is ``--url``, else ``$REDGOV_URL``, else the config's persistence, else
``embedded://.redgov/redgov.db`` (a server redgov starts, its data in ``.redgov/`` of the current
folder); messages saying something was not found name the store and where its url came from
(``store_text``, ``store_hint``). The prefix ``--prefix``, else the config's
``keyPrefix``, else ``gov``. Commands that read history open the SQL copy named by
``--archive``, else ``$REDGOV_EXPORT_URL``, else the config's
``persistence.export.url`` as the backplane's archive, so their reads stay whole
after ``redgov trim`` or retention. A copy named explicitly with ``--archive`` must
open; one that only comes from the environment or the config is skipped with a
warning when it cannot be opened (it may not have been exported yet).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

from ..backplane import Backplane
from ..config import GovernanceConfig, load_config
from ..connect import connect
from ..errors import ConfigError, NotFoundError, RulesMismatchError
from ..governance import Governance
from ..records import ExperimentState
from .output import Output
from .parser import DEFAULT_URL

__all__ = ["Context", "ScopeArgs", "safe_url"]


class ScopeArgs(TypedDict):
    tenant: str | None
    environment: str | None


def safe_url(url: str) -> str:
    """The url with its credentials hidden."""
    if "@" in url and "://" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class Context:
    """The parsed arguments, the output, and how to reach the installation."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        self.tenant: str | None = args.tenant
        self.environment: str | None = args.environment
        self.config: GovernanceConfig | None = load_config(Path(args.config)) if args.config else None

    # -- where
    @property
    def url(self) -> str:
        if self.args.url:
            return str(self.args.url)
        if os.environ.get("REDGOV_URL"):
            return os.environ["REDGOV_URL"]
        if self.config is not None and self.config.persistence is not None:
            return str(self.config.url())
        return DEFAULT_URL

    def url_source(self) -> str:
        """Where the url comes from: ``--url``, ``$REDGOV_URL``, ``--config`` or ``default``."""
        if self.args.url:
            return "--url"
        if os.environ.get("REDGOV_URL"):
            return "$REDGOV_URL"
        if self.config is not None and self.config.persistence is not None:
            return "--config"
        return "default"

    def store_text(self) -> str:
        """The store a command uses, for messages: ``embedded://.redgov/redgov.db (prefix gov, tenant t)``."""
        return f"{safe_url(self.url)} ({self.scope_text()})"

    def store_hint(self) -> str:
        """Where the store came from and how to use another one (a user who ran a Python example on
        ``redis://`` and then the CLI on its embedded default finds nothing)."""
        source = self.url_source()
        if source == "default":
            return (f"the default store, .redgov/ in {Path.cwd()}; pass --url or set REDGOV_URL to use another "
                    "(e.g. redis://localhost:6379)")
        if source == "$REDGOV_URL":
            return "the store of $REDGOV_URL; pass --url to use another"
        if source == "--config":
            return f"the store of --config {self.args.config}; pass --url or set REDGOV_URL to use another"
        return "the store of --url"

    @property
    def prefix(self) -> str:
        if self.args.prefix:
            return str(self.args.prefix)
        if self.config is not None:
            return str(self.config.prefix)
        return "gov"

    @property
    def scope(self) -> ScopeArgs:
        return {"tenant": self.tenant, "environment": self.environment}

    def scope_text(self) -> str:
        """Where, for messages: the prefix and the scope's tenant and environment when set."""
        parts = [f"prefix {self.prefix}"]
        if self.tenant is not None:
            parts.append(f"tenant {self.tenant}")
        if self.environment is not None:
            parts.append(f"environment {self.environment}")
        return ", ".join(parts)

    def archive_url(self) -> tuple[str | None, bool]:
        """The SQL copy history reads fall back to, and whether it was named explicitly (--archive)."""
        if self.args.archive:
            return str(self.args.archive), True
        if os.environ.get("REDGOV_EXPORT_URL"):
            return os.environ["REDGOV_EXPORT_URL"], False
        if self.config is not None and self.config.export_url:
            return str(self.config.export_url), False
        return None, False

    # -- opening
    def _open_archive(self) -> Any:
        url, explicit = self.archive_url()
        if url is None:
            return None
        try:
            from ..sql import SqlArchive
        except ImportError as exc:
            if explicit:
                raise ConfigError(f"--archive needs the SQL extra: pip install 'redgov[sql]' ({exc})") from None
            return None
        try:
            return SqlArchive(url)
        except ConfigError as exc:  # SqlCopyError: no copy there (yet), unreachable, another schema
            if explicit:
                raise
            self.out.warn(f"history reads use Redis only: {exc}")
            return None

    def backplane_open(self, *, archive: bool = False, **options: Any) -> Backplane:
        """A Backplane on the url and prefix, with the config's persistence options and, when ``archive``,
        the SQL copy as its archive (closed with it); ``options`` go to ``connect`` (``cache=True``)."""
        kwargs: dict[str, Any] = dict(options)
        if self.config is not None and not self.config.optimistic_concurrency:
            kwargs["optimistic_concurrency"] = False
        if self.config is not None and self.config.retain_history is not None:
            kwargs["retain_history"] = self.config.retain_history
        opened = self._open_archive() if archive else None
        try:
            return connect(self.url, prefix=self.prefix, archive=opened, **kwargs)
        except BaseException:
            if opened is not None:
                opened.close()
            raise

    @contextmanager
    def governance(self, *, archive: bool = False, **options: Any) -> Iterator[Governance]:
        """A Governance with the config's lifecycle rules, gates, policies, initial state, auto-versioning
        and require-telemetry; closed afterwards. ``options``: see ``backplane_open``.

        Without a config it has no definition of its own, so it follows the scope's published rules
        (``redgov rules publish``); with one whose definition differs from them, its first write to
        the scope raises RulesMismatchError (exit 2)."""
        backplane = self.backplane_open(archive=archive, **options)
        try:
            config = self.config
            if config is not None:
                gov = Governance(backplane, rules=config.lifecycle(), gates=config.gates(),
                                 policies=config.policies(), initial_state=config.initial_state,
                                 auto_versioning=config.auto_versioning,
                                 require_telemetry=bool(getattr(config, "require_telemetry", False)))
            else:
                gov = Governance(backplane)
            try:
                yield gov
            except RulesMismatchError as exc:  # what to do about it, in command-line terms
                raise RulesMismatchError(f"{exc} (--config {self.args.config}: run without --config to follow the "
                                         "published rules, or publish the file with `redgov rules publish`)",
                                         errors=exc.errors) from None
        finally:
            backplane.close()

    def existing(self, gov: Governance, experiment: str) -> ExperimentState:
        """The experiment's state; NotFoundError naming the experiment and where it was looked for."""
        state = gov.state(experiment, **self.scope)
        if state is None:
            raise self.not_found(experiment)
        return state

    def not_found(self, experiment: str) -> NotFoundError:
        """NotFoundError naming the store and scope looked in, and how to look elsewhere."""
        return NotFoundError(f"experiment {experiment} not found in {self.store_text()}: {self.store_hint()}; "
                             f"check --prefix, --tenant and --env, or create it with `redgov create {experiment}`")
