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

Admin (role ``admin``; the role is written in the transaction of its ledger entry ``user.role_set``
``{"user_id", "role", "actor", "before"}``; an unknown user is a 404 with neither written):

  ``PUT /v1/admin/users/{user_id}`` ``{"role": "user"|"operator"|"admin"}`` -> ``{"user_id", "role"}``;
                                   revokes the user's refresh tokens and sessions

Validation errors name fields, never submitted values. A wrong password and an unknown user get
the same 401.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Request
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
)
from opsgate.problems import problem_response
from opsgate.runtime import Runtime
from opsgate.security.counts import COUNTS, SIGN_IN_FAILURE
from opsgate.security.errors import Unauthorized
from opsgate.security.service import SecurityServices
from opsgate.security.sessions import CSRFMiddleware
from opsgate.security.users import authenticate, get_role, set_role
from opsgate.security.web_security import add_web_security

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


@router.post("/v1/auth/token", response_model=TokenAnswer, openapi_extra=body_doc(PasswordGrant, FORM),
             summary="Password grant: access + refresh token")
async def token(grant: Annotated[PasswordGrant, form_body(PasswordGrant)], runtime: RuntimeDep,
                services: SecurityDep) -> Response:
    user_id, role = await _sign_in(runtime, services, grant.username, grant.password)
    issued = await asyncio.to_thread(services.refresh.issue, user_id)
    return _token_answer(runtime, user_id, role, issued.token)


@router.post("/v1/auth/refresh", response_model=TokenAnswer, openapi_extra=body_doc(RefreshGrant, FORM),
             summary="Rotate a refresh token")
async def refresh(grant: Annotated[RefreshGrant, form_body(RefreshGrant)], runtime: RuntimeDep,
                  services: SecurityDep) -> Response:
    issued = await asyncio.to_thread(services.refresh.rotate, grant.refresh_token)
    try:
        role = await asyncio.to_thread(get_role, runtime.engine, issued.user_id)
    except Exception:
        await asyncio.to_thread(services.refresh.revoke_family, issued.family_id)
        raise
    return _token_answer(runtime, issued.user_id, role, issued.token)


@router.post("/v1/auth/logout", status_code=204, openapi_extra=body_doc(LogoutForm, FORM),
             summary="Revoke a refresh token's login")
async def logout(form: Annotated[LogoutForm, form_body(LogoutForm)], services: SecurityDep) -> Response:
    await asyncio.to_thread(services.refresh.revoke, form.refresh_token)
    return Response(status_code=204)


@router.post("/v1/auth/session", response_model=SessionAnswer, openapi_extra=body_doc(SessionLogin, FORM),
             summary="Dashboard login (session cookie)")
async def session_login(form: Annotated[SessionLogin, form_body(SessionLogin)], runtime: RuntimeDep,
                        services: SecurityDep) -> Response:
    user_id, role = await _sign_in(runtime, services, form.username, form.password)
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


async def _sign_in(runtime: Runtime, services: SecurityServices, username: str, password: str) -> tuple[str, str]:
    """:func:`authenticate` off the event loop; a refusal is counted as a failed sign-in."""
    try:
        return await asyncio.to_thread(authenticate, runtime.engine, services.cipher, username, password)
    except Unauthorized as exc:
        COUNTS.add(SIGN_IN_FAILURE, exc.reason)
        raise


def _token_answer(runtime: Runtime, user_id: str, role: str, refresh_token: str) -> Response:
    access = runtime.tokens.issue(user_id, role)
    body = {"access_token": access, "token_type": "Bearer",
            "expires_in": runtime.settings.access_token_ttl_s, "refresh_token": refresh_token}
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def install(app: FastAPI, settings: Settings) -> None:
    """Add this router, the CSRF check for cookie sessions, the CORS allowlist and the security
    headers (outermost, so every response, errors included, carries them) to ``app``."""
    app.include_router(router)
    app.add_middleware(CSRFMiddleware, sessions=lambda scope: get_runtime(Request(scope)).security.sessions,
                       problem=problem_response)
    add_web_security(app, settings.cors_origins, hsts=settings.session_cookie_secure)
