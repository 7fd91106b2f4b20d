"""HTTP API of the security domain (FastAPI router; errors are RFC 9457 problems).

OAuth 2.0 style token endpoints (RFC 6749; bodies ``application/x-www-form-urlencoded``,
answers ``{"access_token", "token_type": "Bearer", "expires_in", "refresh_token"}`` with
``Cache-Control: no-store``, §5.1):

  ``POST /v1/auth/token``          ``grant_type=password&username=&password=`` (§4.3); the username
                                   is a user id or an email address
  ``POST /v1/auth/refresh``        ``grant_type=refresh_token&refresh_token=`` (§6); rotates it
  ``POST /v1/auth/logout``         ``refresh_token=``; revokes its family; 204

Dashboard sessions (cookies, see :mod:`opsgate.security.sessions`):

  ``POST /v1/auth/session``        ``username=&password=`` -> session + CSRF cookies,
                                   ``{"user_id", "role", "csrf_token"}``
  ``POST /v1/auth/session/logout`` ends the session (CSRF-checked); 204

Admin (role ``admin``; written to the ledger as ``user.role_set`` before it takes effect):

  ``PUT /v1/admin/users/{user_id}`` ``{"role": "user"|"operator"|"admin"}`` -> ``{"user_id", "role"}``;
                                   revokes the user's refresh tokens and sessions

Validation errors name fields, never submitted values. A wrong password and an unknown user get
the same 401.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from opsgate.config import Settings
from opsgate.errors import InvalidInput
from opsgate.monitoring.security_counts import COUNTS, SIGN_IN_FAILURE
from opsgate.security.auth import Principal, bearer_token
from opsgate.security.errors import Unauthorized
from opsgate.security.rbac import require_role
from opsgate.security.service import SecurityServices, security_services
from opsgate.security.sessions import CSRFMiddleware
from opsgate.security.users import authenticate, get_role, set_role
from opsgate.security.web_security import add_web_security

router = APIRouter(tags=["auth"])
M = TypeVar("M", bound=BaseModel)
FORM = "application/x-www-form-urlencoded"
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


def _form_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {FORM: {"schema": model.model_json_schema()}}}}


def _responses(model: type[BaseModel] | None) -> dict[int | str, dict[str, Any]]:
    problem = {"description": "RFC 9457 problem details",
               "content": {"application/problem+json": {"schema": {"type": "object"}}}}
    return {"default": problem} if model is None else {"default": problem, 200: {"model": model}}


@router.post("/v1/auth/token", response_model=TokenAnswer, responses=_responses(None),
             openapi_extra=_form_body(PasswordGrant), summary="Password grant: access + refresh token")
async def token(request: Request) -> Response:
    grant = await _form(request, PasswordGrant)
    services, runtime = _services(request)
    user_id, role = await _sign_in(runtime, services, grant.username, grant.password)
    issued = await asyncio.to_thread(services.refresh.issue, user_id)
    return _token_answer(runtime, user_id, role, issued.token)


@router.post("/v1/auth/refresh", response_model=TokenAnswer, responses=_responses(None),
             openapi_extra=_form_body(RefreshGrant), summary="Rotate a refresh token")
async def refresh(request: Request) -> Response:
    grant = await _form(request, RefreshGrant)
    services, runtime = _services(request)
    issued = await asyncio.to_thread(services.refresh.rotate, grant.refresh_token)
    try:
        role = await asyncio.to_thread(get_role, runtime.engine, issued.user_id)
    except Exception:
        await asyncio.to_thread(services.refresh.revoke_family, issued.family_id)
        raise
    return _token_answer(runtime, issued.user_id, role, issued.token)


@router.post("/v1/auth/logout", status_code=204, responses=_responses(None),
             openapi_extra=_form_body(LogoutForm), summary="Revoke a refresh token's login")
async def logout(request: Request) -> Response:
    form = await _form(request, LogoutForm)
    services, _ = _services(request)
    await asyncio.to_thread(services.refresh.revoke, form.refresh_token)
    return Response(status_code=204)


@router.post("/v1/auth/session", response_model=SessionAnswer, responses=_responses(None),
             openapi_extra=_form_body(SessionLogin), summary="Dashboard login (session cookie)")
async def session_login(request: Request) -> Response:
    form = await _form(request, SessionLogin)
    services, runtime = _services(request)
    user_id, role = await _sign_in(runtime, services, form.username, form.password)
    cookies = Response()
    csrf = await asyncio.to_thread(services.sessions.login, cookies, user_id, role)
    response = JSONResponse({"user_id": user_id, "role": role, "csrf_token": csrf},
                            headers={"Cache-Control": "no-store"})
    response.raw_headers.extend(h for h in cookies.raw_headers if h[0] == b"set-cookie")
    return response


@router.post("/v1/auth/session/logout", status_code=204, responses=_responses(None),
             summary="End the dashboard session")
async def session_logout(request: Request) -> Response:
    services, _ = _services(request)
    response = Response(status_code=204)
    await asyncio.to_thread(services.sessions.logout, request, response)
    return response


@router.put("/v1/admin/users/{user_id}", response_model=UserAnswer, responses=_responses(None),
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": RoleUpdate.model_json_schema()}}}},
            summary="Change a user's role (admin)")
async def put_user(user_id: str, request: Request) -> Response:
    runtime = request.app.state.runtime
    admin = _principal(request, "admin")
    body = _json(await request.body(), RoleUpdate)
    services, _ = _services(request)
    await asyncio.to_thread(get_role, runtime.engine, user_id)  # 404 before the ledger entry
    await runtime.ledger.append("user.role_set", {"user_id": user_id, "role": body.role, "actor": admin.user_id})
    await asyncio.to_thread(set_role, runtime.engine, user_id, body.role)
    await asyncio.to_thread(services.refresh.revoke_user, user_id)
    return JSONResponse({"user_id": user_id, "role": body.role})


def _services(request: Request) -> tuple[SecurityServices, Any]:
    runtime = request.app.state.runtime
    return security_services(runtime), runtime


async def _sign_in(runtime: Any, services: SecurityServices, username: str, password: str) -> tuple[str, str]:
    """:func:`authenticate` off the event loop; a refusal is counted as a failed sign-in."""
    try:
        return await asyncio.to_thread(authenticate, runtime.engine, services.cipher, username, password)
    except Unauthorized:
        COUNTS.add(SIGN_IN_FAILURE, "bad_credentials")
        raise


def _principal(request: Request, role: str) -> Principal:
    principal = request.app.state.runtime.tokens.verify(bearer_token(request.headers.get("authorization")))
    require_role(principal, role)
    return principal


def _token_answer(runtime: Any, user_id: str, role: str, refresh_token: str) -> Response:
    access = runtime.tokens.issue(user_id, role)
    body = {"access_token": access, "token_type": "Bearer",
            "expires_in": runtime.settings.access_token_ttl_s, "refresh_token": refresh_token}
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _form(request: Request, model: type[M]) -> M:
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM:
        raise InvalidInput(f"The body must be {FORM}")
    try:
        form = await request.form()
    except Exception:
        raise InvalidInput("The form body could not be parsed") from None
    return _validated(model, {k: v for k, v in form.items() if isinstance(v, str)})


def _json(raw: bytes, model: type[M]) -> M:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("The body is not valid JSON") from None
    return _validated(model, data)


def _validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise InvalidInput("The request failed validation", errors=errors) from None


def install(app: FastAPI, settings: Settings) -> None:
    """Add this router, the CSRF check for cookie sessions, the CORS allowlist and the security
    headers (outermost, so every response, errors included, carries them) to ``app``."""
    app.include_router(router)
    app.add_middleware(CSRFMiddleware, sessions=lambda scope: security_services(scope["app"].state.runtime).sessions)
    add_web_security(app, settings.cors_origins, hsts=settings.session_cookie_secure)
