"""HTTP API of the security domain (FastAPI router; errors are RFC 9457 problems, but the token
endpoints' client errors, which follow RFC 6749 §5.2, :mod:`opsgate.security.oauth`).

OAuth 2.0 token endpoints (RFC 6749; bodies ``application/x-www-form-urlencoded`` in UTF-8,
answers ``{"access_token", "token_type": "Bearer", "expires_in", "refresh_token"}`` with
``Cache-Control: no-store``, §5.1; a refusal is 400 ``{"error", "error_description"}``, §5.2):

  ``POST /v1/auth/token``          ``grant_type=password&username=&password=`` (§4.3); the username
                                   is a user id or an email address; or
                                   ``grant_type=refresh_token&refresh_token=`` (§6)
  ``POST /v1/auth/refresh``        ``grant_type=refresh_token&refresh_token=`` (§6); rotates it
  ``POST /v1/auth/logout``         ``refresh_token=``; revokes its family; 204

Dashboard sessions (cookies, see :mod:`opsgate.security.sessions`):

  ``POST /v1/auth/session``        ``username=&password=`` -> session + CSRF cookies,
                                   ``{"user_id", "role", "csrf_token"}``
  ``POST /v1/auth/session/logout`` ends the session (CSRF-checked); 204

Admin (role ``admin``; the role is written in the transaction of its ledger entry ``user.role_set``
``{"user_id", "role", "actor", "before"}``; an unknown user is a 404 with neither written):

  ``PUT /v1/admin/users/{user_id}`` ``{"role": "user"|"operator"|"admin"}`` -> ``{"user_id", "role"}``;
                                   revokes the user's refresh tokens and sessions

Validation errors name fields, never submitted values. A wrong password and an unknown user get
the same answer (400 ``invalid_grant`` from the token endpoint, 401 from the session sign-in).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, FastAPI, Request, params
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from opsgate.config import Settings
from opsgate.deps import (
    FORM,
    PROBLEM_RESPONSES,
    AdminDep,
    RuntimeDep,
    SecurityDep,
    body_doc,
    form_body,
    get_runtime,
    json_body,
    read_form,
)
from opsgate.problems import problem_response
from opsgate.runtime import Runtime
from opsgate.security.counts import COUNTS, SIGN_IN_FAILURE
from opsgate.errors import NotFound
from opsgate.security.errors import AuthFailure, Unauthorized
from opsgate.security.oauth import INVALID_REQUEST, NO_STORE, UNSUPPORTED_GRANT_TYPE, OAuthError, oauth_errors
from opsgate.security.service import SecurityServices
from opsgate.security.sessions import CSRFMiddleware
from opsgate.security.users import authenticate, get_role, set_role
from opsgate.security.web_security import add_web_security
from opsgate.validation import validated

router = APIRouter(tags=["auth"], responses=PROBLEM_RESPONSES)
_Text = Field(min_length=1, max_length=1024)


class PasswordGrant(BaseModel):
    """``POST /v1/auth/token`` form."""

    model_config = ConfigDict(extra="ignore")
    grant_type: Literal["password"]
    username: str = Field(min_length=1, max_length=254)
    password: str = _Text


class RefreshGrant(BaseModel):
    """``POST /v1/auth/refresh`` form."""

    model_config = ConfigDict(extra="ignore")
    grant_type: Literal["refresh_token"]
    refresh_token: str = Field(min_length=1, max_length=128)


class LogoutForm(BaseModel):
    """``POST /v1/auth/logout`` form."""

    model_config = ConfigDict(extra="ignore")
    refresh_token: str = Field(min_length=1, max_length=128)


class SessionLogin(BaseModel):
    """``POST /v1/auth/session`` form."""

    model_config = ConfigDict(extra="ignore")
    username: str = Field(min_length=1, max_length=254)
    password: str = _Text


class RoleUpdate(BaseModel):
    """``PUT /v1/admin/users/{user_id}`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "operator", "admin"]


class TokenAnswer(BaseModel):
    """RFC 6749 §5.1 access token response."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_token: str


class SessionAnswer(BaseModel):
    """``POST /v1/auth/session`` answer."""

    user_id: str
    role: str
    csrf_token: str


class UserAnswer(BaseModel):
    """``PUT /v1/admin/users/{user_id}`` answer."""

    user_id: str
    role: str


class OAuthErrorAnswer(BaseModel):
    """RFC 6749 §5.2 error response (HTTP 400)."""

    error: Literal["invalid_request", "invalid_grant", "unsupported_grant_type"]
    error_description: str


OAUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "RFC 6749 §5.2 error", "model": OAuthErrorAnswer},
}


def grant_form(*grants: type[BaseModel]) -> params.Depends:
    """``Depends`` on the grant of a token request (a form, :func:`read_form`), parsed into the
    model of ``grants`` whose ``grant_type`` literal it names. Every refusal is an
    :class:`OAuthError` (400, RFC 6749 §5.2): ``invalid_request`` without ``grant_type``, for a
    body that is not a UTF-8 form, too large or malformed, or a model failure;
    ``unsupported_grant_type`` for another grant type."""
    by_type = {get_args(m.model_fields["grant_type"].annotation)[0]: m for m in grants}
    accepted = " or ".join(by_type)

    async def parse(request: Request) -> BaseModel:
        with oauth_errors():
            data = await read_form(request)
            if not data.get("grant_type"):
                raise OAuthError(INVALID_REQUEST, "grant_type is required")
            model = by_type.get(data["grant_type"])
            if model is None:
                raise OAuthError(UNSUPPORTED_GRANT_TYPE, f"grant_type must be {accepted}")
            return validated(model, data)

    parse.__name__ = "form_grant"
    return Depends(parse)


def grants_doc(*grants: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a form body that is one of ``grants``: their fields merged,
    ``grant_type`` one of their literals (the only field every grant requires)."""
    schemas = [g.model_json_schema() for g in grants]
    properties = {k: v for s in schemas for k, v in s["properties"].items()}
    properties["grant_type"] = {"type": "string", "enum": [s["properties"]["grant_type"]["const"] for s in schemas]}
    schema = {"type": "object", "required": ["grant_type"], "properties": properties}
    return {"requestBody": {"required": True, "content": {FORM: {"schema": schema}}}}


@router.post("/v1/auth/token", response_model=TokenAnswer, openapi_extra=grants_doc(PasswordGrant, RefreshGrant),
             responses=OAUTH_RESPONSES, summary="Token endpoint: password or refresh_token grant")
async def token(grant: Annotated[PasswordGrant | RefreshGrant, grant_form(PasswordGrant, RefreshGrant)],
                request: Request, runtime: RuntimeDep, services: SecurityDep) -> Response:
    if isinstance(grant, RefreshGrant):
        return await _rotate(runtime, services, grant.refresh_token)
    with oauth_errors():
        user_id, role = await sign_in(request, runtime, grant.username, grant.password)
    issued = await asyncio.to_thread(services.refresh.issue, user_id)
    return _token_answer(runtime, user_id, role, issued.token, issued.family_id)


@router.post("/v1/auth/refresh", response_model=TokenAnswer, openapi_extra=body_doc(RefreshGrant, FORM),
             responses=OAUTH_RESPONSES, summary="Rotate a refresh token")
async def refresh(grant: Annotated[RefreshGrant, grant_form(RefreshGrant)], runtime: RuntimeDep,
                  services: SecurityDep) -> Response:
    return await _rotate(runtime, services, grant.refresh_token)


@router.post("/v1/auth/logout", status_code=204, openapi_extra=body_doc(LogoutForm, FORM),
             summary="Revoke a refresh token's login")
async def logout(form: Annotated[LogoutForm, form_body(LogoutForm)], services: SecurityDep) -> Response:
    await asyncio.to_thread(services.refresh.revoke, form.refresh_token)
    return Response(status_code=204)


@router.post("/v1/auth/session", response_model=SessionAnswer, openapi_extra=body_doc(SessionLogin, FORM),
             summary="Dashboard login (session cookie)")
async def session_login(form: Annotated[SessionLogin, form_body(SessionLogin)], request: Request,
                        runtime: RuntimeDep, services: SecurityDep) -> Response:
    user_id, role = await sign_in(request, runtime, form.username, form.password)
    cookies = Response()
    csrf = await asyncio.to_thread(services.sessions.login, cookies, user_id, role)
    response = JSONResponse({"user_id": user_id, "role": role, "csrf_token": csrf},
                            headers={"Cache-Control": "no-store"})
    response.raw_headers.extend(h for h in cookies.raw_headers if h[0] == b"set-cookie")
    return response


@router.post("/v1/auth/session/logout", status_code=204, summary="End the dashboard session")
async def session_logout(request: Request, services: SecurityDep) -> Response:
    response = Response(status_code=204)
    await asyncio.to_thread(services.sessions.logout, request, response)
    return response


@router.put("/v1/admin/users/{user_id}", response_model=UserAnswer, openapi_extra=body_doc(RoleUpdate),
            summary="Change a user's role (admin)")
async def put_user(admin: AdminDep, runtime: RuntimeDep, services: SecurityDep, user_id: str,
                   body: Annotated[RoleUpdate, json_body(RoleUpdate)]) -> Response:
    await asyncio.to_thread(set_role, runtime.ledger, services.refresh, user_id, body.role, admin.user_id)
    return JSONResponse({"user_id": user_id, "role": body.role})


async def _rotate(runtime: Runtime, services: SecurityServices, refresh_token: str) -> Response:
    """The refresh grant: rotate ``refresh_token`` and answer with a new access token for the
    user's current role; a refused token is ``invalid_grant``, and so is the token of a user
    deleted since the login (its family is revoked)."""
    with oauth_errors():
        issued = await asyncio.to_thread(services.refresh.rotate, refresh_token)
        try:
            role = await asyncio.to_thread(get_role, runtime.engine, issued.user_id)
        except Exception as exc:
            await asyncio.to_thread(services.refresh.revoke_family, issued.family_id)
            if isinstance(exc, NotFound):
                raise Unauthorized(AuthFailure.REFRESH_INVALID) from None
            raise
    return _token_answer(runtime, issued.user_id, role, issued.token, issued.family_id)


async def sign_in(request: Request, runtime: Runtime, username: str, password: str) -> tuple[str, str]:
    """Every password sign-in (token endpoint, session, dashboard form): the failed sign-in throttle
    (:mod:`opsgate.metering.signins`: :class:`~opsgate.metering.errors.RateLimitExceeded`, 429,
    before the password is checked), then :func:`authenticate` off the event loop; returns
    ``(user_id, role)``. A refusal (:class:`Unauthorized`) is counted as a failed sign-in and
    logged in the throttle for the account and the client address."""
    address = request.client.host if request.client is not None else None
    await runtime.sign_ins.check(username, address)
    try:
        return await asyncio.to_thread(authenticate, runtime.engine, runtime.security.cipher, username, password)
    except Unauthorized as exc:
        COUNTS.add(SIGN_IN_FAILURE, exc.reason)
        await runtime.sign_ins.failed(username, address)
        raise


def _token_answer(runtime: Runtime, user_id: str, role: str, refresh_token: str, login: str) -> Response:
    """The RFC 6749 §5.1 answer: a new access token of the login ``login`` (its ``sid``: the
    refresh-token family) and ``refresh_token``."""
    access = runtime.tokens.issue(user_id, role, sid=login)
    body = {"access_token": access, "token_type": "Bearer",
            "expires_in": runtime.settings.access_token_ttl_s, "refresh_token": refresh_token}
    return JSONResponse(body, headers=NO_STORE)


async def oauth_error_response(request: Request, exc: Exception) -> Response:
    """The §5.2 answer to an :class:`OAuthError` (with ``X-Request-ID``, like a problem)."""
    assert isinstance(exc, OAuthError)
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    return JSONResponse(exc.body(), status_code=exc.status, headers={**NO_STORE, "X-Request-ID": request_id})


def install(app: FastAPI, settings: Settings) -> None:
    """Add this router, the CSRF check for cookie sessions, the CORS allowlist and the security
    headers (outermost, so every response, errors included, carries them) to ``app``."""
    app.include_router(router)
    app.add_exception_handler(OAuthError, oauth_error_response)
    app.add_middleware(CSRFMiddleware, sessions=lambda scope: get_runtime(Request(scope)).security.sessions,
                       problem=problem_response)
    add_web_security(app, settings.cors_origins, hsts=settings.session_cookie_secure)
