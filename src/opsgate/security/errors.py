"""Security failures, mapped to 401 ``unauthorized`` and 403 ``forbidden``."""

from opsgate.errors import OpsgateError


class Unauthorized(OpsgateError):
    """No valid credentials: missing, malformed, expired or wrongly signed token (401)."""

    code = "unauthorized"
    status = 401
    title = "Authentication required"


class Forbidden(OpsgateError):
    """Valid credentials without the right to do this (403)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"
