"""The operator dashboard: server-rendered pages (Jinja2) under ``/dashboard``.

Pages (a dashboard session of an operator or admin; without one, a 303 to the sign-in page; role
``user``: 403 and nothing else): ``/dashboard`` (overview), ``/metrics`` (error rate and latency
over time, ``?window=<s>&operation=<id>``), ``/providers``, ``/costs``, ``/adoption``,
``/rollouts``, ``/incidents``, ``/incidents/{id}``, ``/ledger``, ``/criteria`` (the seed's success
criteria with their evidence; loaded once, not polled). Each other page polls its JSON document
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

from opsgate.deps import RuntimeDep, SecurityDep
from opsgate.errors import OpsgateError
from opsgate.numbers import AsciiInt
from opsgate.operations import OPERATIONS
from opsgate.rollout.controller import ACTIVE
from opsgate.runtime import Runtime
from opsgate.security.auth import Principal
from opsgate.security.operator_input import operator_text
from opsgate.security.rbac import require_role
from opsgate.security.views import sign_in
from opsgate.metering.errors import RateLimitExceeded
from opsgate.web import data
from opsgate.web.access import CHANGE_ROLE, VIEW_ROLE, SessionDep, can_change, csrf_value
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


# static files and sign-in --------------------------------------------------------------------
@router.get("/static/{path:path}")
async def static(request: Request, path: str) -> Response:
    return await STATIC.get_response(path, request.scope)


@router.get("/login")
async def login_page(request: Request, who: SessionDep, services: SecurityDep, next: str = "/dashboard") -> Response:
    if who is not None and _may_view(who):
        return RedirectResponse(_safe_next(next), status_code=303)
    response = _render(request, "login.html", None, {"next": _safe_next(next), "error": None})
    if who is None and services.sessions.cookie in request.cookies:
        services.sessions.logout(request, response)  # drop stale cookies
    return response


@router.post("/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
    form = await _form(request)
    services = runtime.security
    target = _safe_next(form.get("next", ""))
    try:
        user_id, role = await sign_in(request, runtime, form.get("username", ""), form.get("password", ""))
    except RateLimitExceeded as exc:
        refused = _login_error(request, target, f"Too many failed sign-ins; try again in {round(exc.retry_after)} s.", 429)
        refused.headers["Retry-After"] = str(round(exc.retry_after))
        return refused
    except OpsgateError:
        return _login_error(request, target, "Wrong user name or password.", 401)
    if not _may_view(Principal(user_id, (role,))):
        return _login_error(request, target, "This account has no access to the dashboard.", 403)
    response = RedirectResponse(target, status_code=303)
    await asyncio.to_thread(services.sessions.login, response, user_id, role)
    return response


@router.post("/logout")
async def logout(request: Request, services: SecurityDep) -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    await asyncio.to_thread(services.sessions.logout, request, response)
    return response


# pages ---------------------------------------------------------------------------------------
@router.get("")
async def overview_page(request: Request, who: SessionDep, runtime: RuntimeDep, window: AsciiInt | None = None) -> Response:
    if (refused := _refusal(request, who)) is not None:
        return refused
    window_s = data.window_of(runtime, window)
    return await _page(request, who, "overview.html", lambda: data.overview(runtime, window_s),
                       poll=f"/dashboard/data/overview?window={window_s}")


@router.get("/metrics")
async def metrics_page(request: Request, who: SessionDep, runtime: RuntimeDep, window: AsciiInt | None = None,
                       operation: str | None = None) -> Response:
    if (refused := _refusal(request, who)) is not None:
        return refused
    window_s = data.window_of(runtime, window or DEFAULT_SERIES_WINDOW_S)
    op = data.operation_of(operation)
    poll = f"/dashboard/data/series?window={window_s}" + (f"&operation={quote(op)}" if op else "")
    return await _page(request, who, "metrics.html", lambda: data.series(runtime, window_s, op), poll=poll,
                       extra={"windows": WINDOWS, "operations": sorted(OPERATIONS), "operation": op or ""})


@router.get("/providers")
async def providers_page(request: Request, who: SessionDep, runtime: RuntimeDep, window: AsciiInt | None = None) -> Response:
    if (refused := _refusal(request, who)) is not None:
        return refused
    window_s = data.window_of(runtime, window)
    return await _page(request, who, "providers.html", lambda: data.providers(runtime, window_s),
                       poll=f"/dashboard/data/providers?window={window_s}")


@router.get("/costs")
async def costs_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    return await _simple_page(request, who, runtime, "costs")


@router.get("/adoption")
async def adoption_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    return await _simple_page(request, who, runtime, "adoption")


@router.get("/rollouts")
async def rollouts_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    return await _simple_page(request, who, runtime, "rollouts")


@router.get("/incidents")
async def incidents_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    return await _simple_page(request, who, runtime, "incidents")


@router.get("/incidents/{incident_id}")
async def incident_page(request: Request, who: SessionDep, runtime: RuntimeDep, incident_id: str) -> Response:
    return await _page(request, who, "incident.html", lambda: runtime.incidents.show(incident_id))


@router.get("/ledger")
async def ledger_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    return await _simple_page(request, who, runtime, "ledger")


@router.get("/criteria")
async def criteria_page(request: Request, who: SessionDep, runtime: RuntimeDep) -> Response:
    # no polling: today's security report verifies the whole ledger, once per page load
    return await _page(request, who, "criteria.html", lambda: data.criteria(runtime))


# changes -------------------------------------------------------------------------------------
@router.post("/rollouts/{rollout_id}/promote")
async def promote(request: Request, who: SessionDep, runtime: RuntimeDep, rollout_id: AsciiInt) -> Response:
    return await _act(request, who, CHANGE_ROLE, "/dashboard/rollouts",
                      lambda user, form: runtime.rollout.advance(rollout_id, user.user_id))


@router.post("/rollouts/{rollout_id}/rollback")
async def rollback(request: Request, who: SessionDep, runtime: RuntimeDep, rollout_id: AsciiInt) -> Response:
    return await _act(request, who, CHANGE_ROLE, "/dashboard/rollouts",
                      lambda user, form: runtime.rollout.rollback(rollout_id, _text(form, "reason"), user.user_id))


@router.post("/incidents/{incident_id}/ack")
async def acknowledge(request: Request, who: SessionDep, runtime: RuntimeDep, incident_id: str) -> Response:
    return await _act(request, who, VIEW_ROLE, f"/dashboard/incidents/{quote(incident_id)}",
                      lambda user, form: runtime.incidents.acknowledge(incident_id, user.user_id))


@router.post("/incidents/{incident_id}/resolve")
async def resolve(request: Request, who: SessionDep, runtime: RuntimeDep, incident_id: str) -> Response:
    return await _act(request, who, VIEW_ROLE, f"/dashboard/incidents/{quote(incident_id)}",
                      lambda user, form: runtime.incidents.resolve(incident_id, user.user_id, _text(form, "note")))


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


def _refusal(request: Request, who: Principal | None) -> Response | None:
    """None when ``who`` may view the dashboard; otherwise the answer: a redirect to the sign-in
    page (no session, coming back here afterwards) or the denied page (403)."""
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/dashboard/login?next={quote(target, safe='')}", status_code=303)
    if not _may_view(who):
        return _render(request, "denied.html", None, {}, status=403)
    return None


async def _simple_page(request: Request, who: Principal | None, runtime: Runtime, name: str) -> Response:
    return await _page(request, who, f"{name}.html", lambda: data.PAGES[name](runtime), poll=f"/dashboard/data/{name}")


async def _page(request: Request, who: Principal | None, template: str, load: Callable[[], Any], *,
                poll: str | None = None, extra: dict[str, Any] | None = None) -> Response:
    if (refused := _refusal(request, who)) is not None:
        return refused
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
    return operator_text(field, value)


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def _act(request: Request, who: Principal | None, role: str, back: str,
               change: Callable[[Principal, dict[str, str]], Any]) -> Response:
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
