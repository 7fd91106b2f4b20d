"""Secret failures. Messages name the variable or reference, never a value."""

from opsgate.errors import OpsgateError


class SecretNotFound(OpsgateError):
    """The named environment variable is unset, or the 1Password reference resolves to nothing."""

    code = "secret_not_found"
    status = 500
    title = "Secret not configured"


class SecretUnavailable(OpsgateError):
    """The secret store (1Password Connect) could not be reached or refused the request."""

    code = "secret_unavailable"
    status = 503
    title = "Secret store unavailable"
