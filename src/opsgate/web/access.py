"""Who may see the dashboard: a signed-in browser session (see :mod:`opsgate.security.sessions`)
of an ``operator`` or ``admin``. Users with role ``user`` see nothing; only admins change settings
(promote, roll back). The bearer-token API is not accepted here: the dashboard is a browser surface.
"""

from __future__ import annotations

from fastapi import Request

from opsgate.security.auth import Principal
from opsgate.security.errors import Unauthorized
from opsgate.security.rbac import require_role
from opsgate.security.service import security_services
from opsgate.security.sessions import CSRF_COOKIE

VIEW_ROLE = "operator"
CHANGE_ROLE = "admin"


def session_principal(request: Request) -> Principal | None:
    """The principal of the request's dashboard session, or None (no, bad, expired or revoked)."""
    return security_services(request.app.state.runtime).sessions.principal(request)


def require_session(request: Request, role: str = VIEW_ROLE) -> Principal:
    """The session principal holding ``role`` or higher. Raises :class:`Unauthorized` (401) without
    a valid session and :class:`Forbidden` (403) for a lower role."""
    principal = session_principal(request)
    if principal is None:
        raise Unauthorized("Sign in to the dashboard first")
    require_role(principal, role)
    return principal


def can_change(principal: Principal) -> bool:
    """True when ``principal`` may change settings (admin)."""
    return CHANGE_ROLE in principal.roles


def csrf_value(request: Request) -> str:
    """The signed double-submit CSRF token of the session (the ``opsgate_csrf`` cookie), for forms."""
    return request.cookies.get(CSRF_COOKIE, "")
