"""The operator dashboard: server-rendered pages (Jinja2) under ``/dashboard``.

Pages (a dashboard session of an operator or admin; without one, a 303 to the sign-in page; role
``user``: 403 and nothing else): ``/dashboard`` (overview), ``/metrics`` (error rate and latency
over time, ``?window=<s>&operation=<id>``), ``/providers``, ``/costs``, ``/adoption``,
``/rollouts``, ``/incidents``, ``/incidents/{id}``, ``/ledger``. Each page polls its JSON document
(:mod:`opsgate.web.data`) every few seconds and refreshes its figures in place.

Forms (``application/x-www-form-urlencoded``, each carrying the session's ``csrf_token``, checked by
:class:`opsgate.security.sessions.CSRFMiddleware`; answered with a 303 back to the page, with
``?error=<code>`` when the domain refused the change):
``POST /dashboard/login`` (``username``, ``password``, ``next``), ``POST /dashboard/logout``,
``POST /dashboard/rollouts/{id}/promote`` and ``/rollback`` (``reason``; admin only),
``POST /dashboard/incidents/{id}/ack`` and ``/resolve`` (``note``; operator or admin).

Static files (``/dashboard/static/...``: the page script, the stylesheet, the vendored uPlot chart
library) need no session and come from this package: the dashboard works without internet.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.staticfiles import StaticFiles

from opsgate.errors import OpsgateError
from opsgate.operations import OPERATIONS
from opsgate.rollout.controller import ACTIVE
from opsgate.security.auth import Principal
from opsgate.security.rbac import require_role
from opsgate.security.service import security_services
from opsgate.security.users import authenticate
from opsgate.web import data
from opsgate.web.access import CHANGE_ROLE, VIEW_ROLE, can_change, csrf_value, session_principal
from opsgate.web.format import figure, show

HERE = Path(__file__).parent
STATIC = StaticFiles(directory=HERE / "static")
TEMPLATES = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                                            undefined=StrictUndefined))
TEMPLATES.env.globals["active_states"] = frozenset(s.value for s in ACTIVE)
WINDOWS = ((3600, "1 h"), (6 * 3600, "6 h"), (86400, "24 h"), (7 * 86400, "7 days"))
DEFAULT_SERIES_WINDOW_S = 6 * 3600
FORM_TEXT = 500
_CODE = re.compile(r"[a-z_]{1,64}\Z")
_NEXT = re.compile(r"/dashboard(/[A-Za-z0-9_./?=&%-]*)?\Z")

router = APIRouter(prefix="/dashboard", include_in_schema=False)
router.include_router(data.router)


class _SignIn(Exception):
    """Raised inside a page handler: answer with a redirect to the sign-in page."""


# static files and sign-in --------------------------------------------------------------------
@router.get("/static/{path:path}")
async def static(request: Request, path: str) -> Response:
    return await STATIC.get_response(path, request.scope)


@router.get("/login")
async def login_page(request: Request, next: str = "/dashboard") -> Response:
    who = session_principal(request)
    if who is not None and _may_view(who):
        return RedirectResponse(_safe_next(next), status_code=303)
    response = _render(request, "login.html", None, {"next": _safe_next(next), "error": None})
    if who is None and security_services(request.app.state.runtime).sessions.cookie in request.cookies:
        security_services(request.app.state.runtime).sessions.logout(request, response)  # drop stale cookies
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    runtime = request.app.state.runtime
    services = security_services(runtime)
    target = _safe_next(form.get("next", ""))
    try:
        user_id, role = await asyncio.to_thread(authenticate, runtime.engine, services.cipher,
                                                form.get("username", ""), form.get("password", ""))
    except OpsgateError:
        return _login_error(request, target, "Wrong user name or password.", 401)
    if not _may_view(Principal(user_id, (role,))):
        return _login_error(request, target, "This account has no access to the dashboard.", 403)
    response = RedirectResponse(target, status_code=303)
    await asyncio.to_thread(services.sessions.login, response, user_id, role)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    await asyncio.to_thread(security_services(request.app.state.runtime).sessions.logout, request, response)
    return response


# pages ---------------------------------------------------------------------------------------
@router.get("")
async def overview_page(request: Request, window: int | None = None) -> Response:
    runtime = request.app.state.runtime
    window_s = data.window_of(runtime, window)
    return await _page(request, "overview.html", lambda: data.overview(runtime, window_s),
                       poll=f"/dashboard/data/overview?window={window_s}")


@router.get("/metrics")
async def metrics_page(request: Request, window: int | None = None, operation: str | None = None) -> Response:
    runtime = request.app.state.runtime
    window_s = data.window_of(runtime, window or DEFAULT_SERIES_WINDOW_S)
    op = data.operation_of(operation)
    poll = f"/dashboard/data/series?window={window_s}" + (f"&operation={quote(op)}" if op else "")
    return await _page(request, "metrics.html", lambda: data.series(runtime, window_s, op), poll=poll,
                       extra={"windows": WINDOWS, "operations": sorted(OPERATIONS), "operation": op or ""})


@router.get("/providers")
async def providers_page(request: Request, window: int | None = None) -> Response:
    runtime = request.app.state.runtime
    window_s = data.window_of(runtime, window)
    return await _page(request, "providers.html", lambda: data.providers(runtime, window_s),
                       poll=f"/dashboard/data/providers?window={window_s}")


@router.get("/costs")
async def costs_page(request: Request) -> Response:
    return await _simple_page(request, "costs")


@router.get("/adoption")
async def adoption_page(request: Request) -> Response:
    return await _simple_page(request, "adoption")


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    return await _simple_page(request, "rollouts")


@router.get("/incidents")
async def incidents_page(request: Request) -> Response:
    return await _simple_page(request, "incidents")


@router.get("/incidents/{incident_id}")
async def incident_page(request: Request, incident_id: str) -> Response:
    runtime = request.app.state.runtime
    return await _page(request, "incident.html", lambda: data.incident_service(runtime).show(incident_id))


@router.get("/ledger")
async def ledger_page(request: Request) -> Response:
    return await _simple_page(request, "ledger")


# changes -------------------------------------------------------------------------------------
@router.post("/rollouts/{rollout_id}/promote")
async def promote(request: Request, rollout_id: int) -> Response:
    return await _act(request, CHANGE_ROLE, "/dashboard/rollouts",
                      lambda who, form: request.app.state.runtime.rollout.advance(rollout_id, who.user_id))


@router.post("/rollouts/{rollout_id}/rollback")
async def rollback(request: Request, rollout_id: int) -> Response:
    def act(who: Principal, form: dict[str, str]) -> Any:
        reason = _text(form, "reason")
        return request.app.state.runtime.rollout.rollback(rollout_id, reason, who.user_id)

    return await _act(request, CHANGE_ROLE, "/dashboard/rollouts", act)


@router.post("/incidents/{incident_id}/ack")
async def acknowledge(request: Request, incident_id: str) -> Response:
    runtime = request.app.state.runtime
    return await _act(request, VIEW_ROLE, f"/dashboard/incidents/{quote(incident_id)}",
                      lambda who, form: data.incident_service(runtime).acknowledge(incident_id, who.user_id))


@router.post("/incidents/{incident_id}/resolve")
async def resolve(request: Request, incident_id: str) -> Response:
    runtime = request.app.state.runtime

    def act(who: Principal, form: dict[str, str]) -> Any:
        return data.incident_service(runtime).resolve(incident_id, who.user_id, _text(form, "note"))

    return await _act(request, VIEW_ROLE, f"/dashboard/incidents/{quote(incident_id)}", act)


# helpers -------------------------------------------------------------------------------------
def _may_view(who: Principal) -> bool:
    try:
        require_role(who, VIEW_ROLE)
    except OpsgateError:
        return False
    return True


def _safe_next(target: str) -> str:
    """Only a dashboard path may follow sign-in (no open redirect)."""
    return target if _NEXT.match(target or "") else "/dashboard"


def _viewer(request: Request) -> Principal:
    who = session_principal(request)
    if who is None:
        raise _SignIn()
    require_role(who, VIEW_ROLE)
    return who


async def _simple_page(request: Request, name: str) -> Response:
    runtime = request.app.state.runtime
    return await _page(request, f"{name}.html", lambda: data.PAGES[name](runtime), poll=f"/dashboard/data/{name}")


async def _page(request: Request, template: str, load: Callable[[], Any], *, poll: str | None = None,
                extra: dict[str, Any] | None = None) -> Response:
    try:
        who = _viewer(request)
    except _SignIn:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/dashboard/login?next={quote(target, safe='')}", status_code=303)
    except OpsgateError:
        return _render(request, "denied.html", None, {}, status=403)
    doc = await asyncio.to_thread(load)
    error = request.query_params.get("error", "")
    return _render(request, template, who, {"doc": doc, "poll": poll, "error": error if _CODE.match(error) else None,
                                            **(extra or {})})


def _render(request: Request, template: str, who: Principal | None, context: dict[str, Any],
            status: int = 200) -> HTMLResponse:
    page = {"request": request, "who": who, "can_change": who is not None and can_change(who),
            "csrf": csrf_value(request), "figure": figure, "show": show, "path": request.url.path,
            "poll": None, "error": None, **context}
    response = TEMPLATES.TemplateResponse(request, template, page, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _login_error(request: Request, target: str, message: str, status: int) -> HTMLResponse:
    return _render(request, "login.html", None, {"next": target, "error": message}, status=status)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _text(form: dict[str, str], field: str) -> str:
    value = form.get(field, "").strip()
    if not 0 < len(value) <= FORM_TEXT:
        raise _Refused("invalid_input")
    return value


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def _act(request: Request, role: str, back: str, change: Callable[[Principal, dict[str, str]], Any]) -> Response:
    who = session_principal(request)
    if who is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    try:
        require_role(who, role)
    except OpsgateError:
        return _render(request, "denied.html", None, {}, status=403)
    form = await _form(request)
    try:
        await asyncio.to_thread(change, who, form)
    except (OpsgateError, _Refused) as exc:
        return RedirectResponse(f"{back}?error={exc.code}", status_code=303)
    return RedirectResponse(back, status_code=303)
