"""FastAPI dependencies for every route, in ``Annotated`` form (as the FastAPI full-stack
template's ``api/deps.py`` does): who may call a route reads in its signature and in OpenAPI.

================== ==========================================================================
``RuntimeDep``     the process's :class:`~opsgate.runtime.Runtime` (opened by the lifespan)
``PrincipalDep``   the caller of a valid ``Authorization: Bearer`` access token (RFC 6750), 401
``UserDep``        ``require_role("user")``: any authenticated caller
``OperatorDep``    ``require_role("operator")``: operator or admin, 403 for a lower role
``AdminDep``       ``require_role("admin")``
``SecurityDep``    key ring, field cipher, refresh tokens, browser sessions
``RolloutDep``     toggles and canary rollouts
``IncidentsDep``   incidents with the configured notifiers and contacts
================== ==========================================================================

A protected route's first parameter is its role dependency; FastAPI solves dependencies in the
order of the signature and stops at the first that raises, so a caller without a token (401) or
with too low a role (403) is refused before anything else about the request is looked at. A
body is never a FastAPI body parameter (those are JSON-decoded before any dependency runs): it is
:func:`json_body` or :func:`form_body`, a dependency that itself needs the principal (JSON) and
reads the body only when its turn comes. Its schema reaches OpenAPI through :func:`body_doc`.

OpenAPI: every protected route lists the ``HTTPBearer`` scheme with the role it needs as the
requirement's value (OpenAPI 3.1 §4.8.30: for non-OAuth schemes the array MAY list role names).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Security, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from opsgate import bodies
from opsgate.bodies import FORM, JSON
from opsgate.errors import UnsupportedMediaType
from opsgate.monitoring.incidents import IncidentService
from opsgate.rollout.service import RolloutService
from opsgate.runtime import Runtime
from opsgate.security import rbac
from opsgate.security.auth import Principal, bearer_token
from opsgate.security.service import SecurityServices
from opsgate.security.users import current_principal
from opsgate.validation import validated

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BODY_BYTES = 64 * 1024
"""The largest admin or settings body (a rollout plan, a note of 2,000 characters fit many times)."""
MAX_FORM_BODY_BYTES = 16 * 1024
"""The largest sign-in form (user name, password, a refresh token)."""

BEARER = "bearer"
"""The OpenAPI name of the bearer-token security scheme."""
bearer_scheme = HTTPBearer(
    scheme_name=BEARER,
    auto_error=False,
    description="A 1-hour JWT access token (POST /v1/auth/token or `opsgate token USER`); the "
    "requirement lists the least role a route needs (user < operator < admin).",
)
"""Declares the scheme in OpenAPI; the token itself is checked by :func:`get_principal`."""


def get_runtime(request: Request) -> Runtime:
    """The runtime the app's lifespan opened (the one place a route reaches ``app.state``)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_principal(
    request: Request,
    runtime: RuntimeDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """The caller of the request's bearer token; :class:`Unauthorized` (401) for a missing, wrong
    scheme, malformed, expired or forged one. Verified once per request (kept on
    ``request.state``, whichever role dependency asked first)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is None:
        known = request.state.principal = runtime.tokens.verify(bearer_token(request.headers.get("authorization")))
    return known


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@cache
def require_role(role: str) -> Callable[[Principal, Runtime], Principal]:
    """A dependency answering the principal when it holds ``role`` or a higher one; raises
    :class:`Forbidden` (403) otherwise. One function per role, so FastAPI caches it per request.

    Above ``user`` the token's role is capped at the user's current role in the store
    (:func:`~opsgate.security.users.current_principal`, one read per privileged request), so a
    demotion takes effect on the next request, in every process, for tokens issued before it.
    ``user`` needs no read: every user holds it."""

    def dependency(principal: PrincipalDep, runtime: RuntimeDep) -> Principal:
        if role != "user":
            principal = current_principal(runtime.engine, principal)
        rbac.require_role(principal, role)
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


UserDep = Annotated[Principal, Security(require_role("user"), scopes=["user"])]
OperatorDep = Annotated[Principal, Security(require_role("operator"), scopes=["operator"])]
AdminDep = Annotated[Principal, Security(require_role("admin"), scopes=["admin"])]


def get_security(runtime: RuntimeDep) -> SecurityServices:
    """The runtime's security services."""
    return runtime.security


def get_rollout(runtime: RuntimeDep) -> RolloutService:
    """The runtime's toggles and rollouts."""
    return runtime.rollout


def get_incidents(runtime: RuntimeDep) -> IncidentService:
    """The runtime's incident service (notifiers and contacts wired once, at start-up)."""
    return runtime.incidents


SecurityDep = Annotated[SecurityServices, Depends(get_security)]
RolloutDep = Annotated[RolloutService, Depends(get_rollout)]
IncidentsDep = Annotated[IncidentService, Depends(get_incidents)]


def json_body(model: type[M]) -> params.Depends:
    """``Depends`` on a parser of the request's JSON body into ``model``, run only after the
    caller is authenticated (it needs :data:`PrincipalDep`) and before the route acts. An empty
    body counts as ``{}``; any other goes through :mod:`opsgate.bodies` (413 over
    :data:`MAX_JSON_BODY_BYTES`, 415 unless JSON, 422 for invalid JSON, a repeated key or an
    integer past 64 bits), then ``model`` in strict mode (a JSON body has real numbers and
    booleans: ``"5"`` is not 5, ``"true"`` not True). :class:`InvalidInput` (422) names fields
    and rules, never values. ``model`` must forbid extra keys (``TypeError`` at import otherwise):
    a misspelt key is refused, never silently dropped."""

    if model.model_config.get("extra") != "forbid":
        raise TypeError(f"{model.__name__} must forbid extra keys (an unknown key would be silently dropped)")

    async def parse(request: Request, _caller: PrincipalDep) -> M:
        raw = await bodies.read_body(request, MAX_JSON_BODY_BYTES)
        data = bodies.decode_json(raw, request.headers.get("content-type")) if raw else {}
        return validated(model, data, strict=True)

    parse.__name__ = f"json_{model.__name__}"
    return Depends(parse)


class NoBody(BaseModel):
    """The body of a route that acts on its path alone: empty or ``{}``. Declared (as
    :data:`NoBodyDep`) so that a malformed, non-JSON or non-empty body is refused before the route
    acts, like any other body."""

    model_config = ConfigDict(extra="forbid")


NoBodyDep = Annotated[NoBody, json_body(NoBody)]


async def read_form(request: Request) -> dict[str, str]:
    """The request's ``application/x-www-form-urlencoded`` body as ``{field: value}``: 415
    (:class:`UnsupportedMediaType`) for another media type or a charset other than UTF-8, 413
    over :data:`MAX_FORM_BODY_BYTES`, 422 for a malformed or repeated field
    (:func:`opsgate.bodies.decode_form`)."""
    if not bodies.is_form(request.headers.get("content-type")):
        raise UnsupportedMediaType(f"The body must be {FORM} in UTF-8")
    return bodies.decode_form(await bodies.read_body(request, MAX_FORM_BODY_BYTES))


def form_body(model: type[M]) -> params.Depends:
    """``Depends`` on a parser of a form body (:func:`read_form`) into ``model`` (for the public
    sign-in routes; text fields only); 422 for a model failure too."""

    async def parse(request: Request) -> M:
        return validated(model, await read_form(request))

    parse.__name__ = f"form_{model.__name__}"
    return Depends(parse)


def body_doc(model: type[BaseModel], media_type: str = JSON) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the required request body of ``media_type``
    (a flat model: nested models would need their ``$defs`` hoisted to components)."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise TypeError(f"{model.__name__} nests models; document it with components")
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {"description": "RFC 9457 problem details",
                "content": {"application/problem+json": {"schema": {"type": "object"}}}},
}
"""``responses=`` for routes: every error is an RFC 9457 problem."""

