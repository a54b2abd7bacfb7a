"""``redgov serve``: the operator web UI and JSON API (``pip install 'redgov[web]'``).

``create_app(governance, users_file, secret)`` is a Starlette application: pages for the
experiments of every scope, one experiment (moves, history, versions with a diff, approvals,
policy evaluations), the approval inbox and the audit log; a JSON API under ``/api/`` with
an OpenAPI schema; live updates over Server-Sent Events fed by the scope streams; Prometheus
metrics at ``/metrics``. Users and roles come from a users file (``redgov users add``).
The core library never imports this package.
"""

from ..errors import ConfigError

try:
    import argon2  # noqa: F401
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as missing:  # the optional dependencies: one clear error instead of a traceback
    raise ConfigError(f"redgov serve needs the web extra: pip install 'redgov[web]' ({missing})") from None

from .app import WebContext, create_app
from .users import Role, User, Users, add_user

__all__ = ["Role", "User", "Users", "WebContext", "add_user", "create_app"]
