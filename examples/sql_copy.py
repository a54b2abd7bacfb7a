"""The SQL copy: export the history to SQLite, trim it from Redis, read it whole through the copy,
and rebuild the copy into another prefix (needs the ``sql`` extra: ``pip install 'redgov[sql]'``).

    python examples/sql_copy.py

REDGOV_URL chooses the server (default redis://localhost:6379/0); the keys go under the prefixes
``example-sql-live:`` and ``example-sql-restored:`` (``$REDGOV_EXAMPLE_PREFIX`` replaces
``example-sql-``). The copy is ``example-copy.db`` in the current folder (``$REDGOV_EXAMPLE_SQL``: another
SQLAlchemy URL). Each run governs a new experiment and exports what is new, so every run prints
the same.
"""

from __future__ import annotations

import os
import uuid

import redgov
from redgov import Governance
from redgov import LifecycleState as S
from redgov.sql import SqlArchive, export, restore, trim

URL = os.environ.get("REDGOV_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("REDGOV_EXAMPLE_PREFIX", "example-sql-")
COPY = os.environ.get("REDGOV_EXAMPLE_SQL", "sqlite:///example-copy.db")


def main() -> None:
    name = f"pricing-{uuid.uuid4().hex[:8]}"  # a new experiment each run
    with Governance(redgov.connect(URL, prefix=PREFIX + "live:")) as gov:
        gov.create(name, actor="ana", configuration={"discount": 0.1})
        for state in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition(name, state, actor="ana")
        gov.create_version(name, {"discount": 0.15}, actor="ben", description="a deeper discount")
        export(gov.backplane, COPY, progress=False)  # every scope of the prefix; what is new since the last run
        trim(gov.backplane, COPY)  # remove from Redis what the copy holds, never more
        print("transitions left in Redis after the trim:", len(gov.history(name)))
        print("consistent after the trim:", gov.verify(name) == [])
        live = gov.state(name)

    with Governance(redgov.connect(URL, prefix=PREFIX + "live:", archive=SqlArchive(COPY))) as gov:
        print("read through the copy:", " -> ".join(t.to_state.value for t in gov.history(name)))

    with Governance(redgov.connect(URL, prefix=PREFIX + "restored:")) as restored:
        # force: replace what the prefix holds; source_prefix: which of the copy's prefixes to restore
        restore(restored.backplane, COPY, source_prefix=PREFIX + "live:", force=True, progress=False)
        print("restored: the same state:", restored.state(name) == live,
              "| versions:", [v.version for v in restored.backplane.versions(name)],
              "| consistent:", restored.verify(name) == [])


if __name__ == "__main__":
    main()
