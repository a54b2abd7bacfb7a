"""The durable SQL copy of the Redis history (``pip install 'redgov[sql]'``).

Python API::

    from redgov.sql import SqlArchive, export, follow, restore, trim
    summary = export(backplane, "sqlite:///gov.db")          # every scope of the prefix, once
    follow(backplane, "sqlite:///gov.db")                     # until SIGINT/SIGTERM or stop.set()
    restore(other_backplane, "sqlite:///gov.db")              # into an empty prefix
    trim(backplane, "sqlite:///gov.db")                       # each experiment's exported history
    redgov.connect(url, archive=SqlArchive("sqlite:///gov.db"))  # history reads whole after trimming

Modules: ``schema`` (tables), ``copy`` (``SqlCopy``: connection, cursors, reads),
``write`` (one SQL transaction per batch), ``exporter``, ``trimmer``, ``restorer``,
``archive`` (``SqlArchive``) and ``command`` (the CLI). Every SQLAlchemy error
surfaces as ``SqlCopyError`` (a ``ConfigError``) naming the copy, its password hidden.
"""

from .archive import SqlArchive
from .copy import SqlCopyError
from .exporter import ExportSummary, export, follow
from .restorer import RestoreSummary, restore
from .trimmer import TrimSummary, trim

__all__ = ["ExportSummary", "RestoreSummary", "SqlArchive", "SqlCopyError", "TrimSummary", "export", "follow",
           "restore", "trim"]
