"""Checks for the lines of the seed's security audit that the first readiness audit did not
cover (see docs/seed-phase8.md). Each takes the audit's :class:`~opsgate.reports.readiness.Context`
and returns ``(ok, evidence)``: True pass, False fail, None not applicable to this deployment.

Evidence from the last test run (``artifacts/junit.xml``) is used where the line is a property
of the code that a test suite proves and no probe of the running deployment could (SQL injection,
XSS): the item then names the test module, how many of its cases ran and which did not pass.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from sqlalchemy import func, inspect, select

from opsgate.monitoring.evidence import JUNIT, EvidenceError, test_cases

if TYPE_CHECKING:
    from opsgate.reports.readiness import Context

Result = tuple[bool | None, str]
URL_SETTINGS = (
    "anthropic_base_url", "deepseek_base_url", "gemini_base_url", "pagerduty_url", "twilio_base_url",
)
SECRET_URL_SETTINGS = ("discord_webhook_url", "ledger_discord_webhook_url")
AUDIT_TRAIL_MAX_AGE = timedelta(days=1)


# Secret management ---------------------------------------------------------------------------
async def onepassword_verified(ctx: Context) -> Result:
    """Every credential given as an ``op://`` reference resolves through 1Password Connect
    (``OP_CONNECT_HOST`` / ``OP_CONNECT_TOKEN``): the built-in provider keys, each named
    endpoint's ``api_key_env`` key, the JWT secret and the master key, read from the settings
    as the gateway reads them (a provider key from ``ANTHROPIC_API_KEY`` or
    ``OPSGATE_ANTHROPIC_API_KEY``, :func:`~opsgate.security.secrets.provider_key_sources`);
    not applicable when none is a reference."""
    from opsgate.providers.http import make_session
    from opsgate.security.secrets import connect_from_env, provider_key_sources
    from opsgate.security.secrets_connect import OpReference

    s = ctx.settings
    credentials = provider_key_sources(s) | {
        name: secret.get_secret_value()
        for name, secret in (("OPSGATE_JWT_SECRET", s.jwt_secret), ("OPSGATE_MASTER_KEY", s.master_key))
        if secret is not None}
    refs = {name: value for name, value in credentials.items() if value.startswith("op://")}
    if not refs:
        return None, "no credential is an op:// reference: every one comes from its environment variable"
    session = make_session()
    try:
        connect = connect_from_env(session)
        if connect is None:
            return False, f"{', '.join(refs)} are op:// references but OP_CONNECT_HOST/OP_CONNECT_TOKEN are unset"
        for raw in refs.values():
            await connect.resolve(OpReference.parse(raw))
    finally:
        await session.close()
    return True, f"{len(refs)} op:// reference(s) resolved through 1Password Connect: {', '.join(refs)}"


# Code privacy --------------------------------------------------------------------------------
def suite_evidence(ctx: Context, module: str, what: str) -> Result:
    """The cases of test ``module`` in the last run's junit.xml all passed."""
    path = ctx.root / "artifacts" / JUNIT
    try:
        ran, bad = test_cases(path, module)
    except EvidenceError as exc:
        return False, str(exc)
    if not ran:
        return False, f"{module} did not run in {path}: run `./dev test` (the whole suite)"
    if bad:
        return False, f"{module}: {len(bad)} of {ran} case(s) did not pass ({', '.join(bad[:3])})"
    return True, f"{module}: {ran} case(s) passed in {path} — {what}"


def no_sql_injection(ctx: Context) -> Result:
    return suite_evidence(ctx, "tests.security.test_injection_corpus",
                          "SQL-injection payloads in every string input over HTTP: no 5xx, no echo, "
                          "tables and row counts unchanged, ledger verifies")


def no_xss(ctx: Context) -> Result:
    return suite_evidence(ctx, "tests.security.test_injection_corpus",
                          "XSS payloads in every string input: never unescaped in problem documents "
                          "or the dashboard's pages (server-rendered, autoescaped; there is no React)")


# Provider integration ------------------------------------------------------------------------
def https_everywhere(ctx: Context) -> Result:
    """Every outbound base URL (providers, PagerDuty, Twilio, Discord webhooks) is https, or
    http on loopback only (the sandboxes)."""
    from opsgate.reports.weak_config import weak_settings

    s = ctx.settings
    plain = [f"{f['setting']}={f['value']}" for f in weak_settings(s) if f["setting"].endswith("_url")]
    for name in SECRET_URL_SETTINGS:
        value = getattr(s, name)
        if value is not None and not value.get_secret_value().startswith("https://"):
            plain.append(f"{name} is not https")
    if plain:
        return False, "; ".join(plain)
    shown = ", ".join(f"{n}" for n in URL_SETTINGS + SECRET_URL_SETTINGS if getattr(s, n))
    return True, f"https (or loopback http) for {shown}"


def provider_key_rotation(ctx: Context) -> Result:
    """Each configured provider key -- the built-in providers' and each named endpoint's
    (``[providers.<name>] api_key_env``), as the gateway reads them
    (:func:`~opsgate.security.secrets.provider_key_sources`) -- has a rotation date
    (``<NAME>_ROTATED_AT``, ISO 8601, :func:`~opsgate.security.secrets.rotation_age`) within
    the rotation policy (``key_rotation_days``); ``op://`` keys are dated by 1Password
    (``opsgate secrets check``); during a rotation the old key stays valid as
    ``<NAME>_PREVIOUS`` (docs/security.md)."""
    from opsgate.security.secrets import provider_key_sources, rotation_age

    s, now = ctx.settings, ctx.clock.now()
    keys = provider_key_sources(s)
    if not keys:
        return None, "no provider key is configured (sandbox)"
    found, bad = [], []
    for name, raw in keys.items():
        if raw.startswith("op://"):
            found.append(f"{name}: dated by 1Password")
            continue
        try:
            age = rotation_age(name, os.environ, now)
        except ValueError:
            bad.append(f"{name}: {name}_ROTATED_AT is not ISO 8601")
            continue
        if age is None:
            bad.append(f"{name}: no {name}_ROTATED_AT, so its age is unknown")
            continue
        (bad if age.days > s.key_rotation_days else found).append(f"{name}: rotated {age.days} days ago")
    text = "; ".join(bad + found) + f" (policy {s.key_rotation_days} days)"
    return not bad, text


# Hash chain ----------------------------------------------------------------------------------
def ledger_append_only(ctx: Context) -> Result:
    """The append-only triggers are installed on every ledger table (UPDATE and DELETE refused)."""
    from opsgate.ledger.guards import GUARDED_TABLES

    with ctx.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(
                "SELECT c.relname, count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal GROUP BY c.relname").all()
        else:
            rows = conn.exec_driver_sql(
                "SELECT tbl_name, count(*) FROM sqlite_master WHERE type = 'trigger' GROUP BY tbl_name").all()
    triggers: dict[str, int] = {str(t): int(n) for t, n in rows}
    missing = [t for t in GUARDED_TABLES if triggers.get(t, 0) < 2]
    if missing:
        return False, f"no append-only triggers on {', '.join(missing)}"
    return True, f"UPDATE/DELETE refused by triggers on {', '.join(GUARDED_TABLES)}"


def intent_before_result(ctx: Context) -> Result:
    """Every ``result`` entry of the ledger follows an ``intent`` entry of the same request, so
    each call was on record before its provider saw it."""
    from opsgate.store.models import ledger_entries

    seen: set[str] = set()
    results = orphans = 0
    with ctx.engine.connect() as conn:
        for body in conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq)).scalars():
            entry = orjson.loads(body)
            if entry.get("kind") == "intent":
                seen.add(entry.get("request_id"))
            elif entry.get("kind") == "result":
                results += 1
                orphans += entry.get("request_id") not in seen
    if orphans:
        return False, f"{orphans} of {results} result entries have no earlier intent"
    return True, f"all {results} result entries follow their request's intent entry"


def discord_anchor(ctx: Context) -> Result:
    """The ledger's checkpoints are posted to a Discord webhook (an external record) up to the
    latest one."""
    from opsgate.ledger.models import ledger_anchor_state, ledger_checkpoints

    if ctx.settings.ledger_discord_webhook_url is None:
        return False, "OPSGATE_LEDGER_DISCORD_WEBHOOK_URL is unset: checkpoints go to no Discord record"
    with ctx.engine.connect() as conn:
        anchored = conn.execute(select(ledger_anchor_state.c.anchored_size)
                                .where(ledger_anchor_state.c.anchor == "discord")).scalar()
        latest = conn.execute(select(func.max(ledger_checkpoints.c.size))).scalar()
    if not latest:
        return False, "no checkpoint signed yet (the gateway signs them as the ledger grows)"
    if (anchored or 0) < latest:
        return False, f"Discord holds checkpoints up to size {anchored or 0}, the latest is {latest}"
    return True, f"Discord holds the latest checkpoint (size {latest})"


def ledger_links(ctx: Context) -> Result:
    """A verification of the whole ledger: every entry's hash and its link to the previous one."""
    from opsgate.ledger.verify import format_summary

    report = verified(ctx)
    return report.ok, format_summary(report)


def ledger_timestamps(ctx: Context) -> Result:
    """No entry's time runs backwards (``clock_regression`` warnings of the verification)."""
    report = verified(ctx)
    if not report.ok:
        return False, "the ledger does not verify, so its timestamps are not trusted"
    regressions = [w for w in report.warnings if w.kind == "clock_regression"]
    if regressions:
        return False, f"{len(regressions)} entries are older than their predecessor (first at seq {regressions[0].seq})"
    return True, f"timestamps never decrease over {report.entries} entries (UTC, fixed-width)"


def verified(ctx: Context) -> Any:
    """The whole ledger's :func:`~opsgate.ledger.verify.verify` report, once per audit."""
    from opsgate.ledger.verify import verify

    if "verify" not in ctx.cache:
        ctx.cache["verify"] = verify(ctx.engine)
    return ctx.cache["verify"]


# Data encryption -----------------------------------------------------------------------------
def data_keys_wrapped(ctx: Context) -> Result:
    """Data keys are stored only wrapped under the master key (AES-256-GCM), refresh tokens only
    as hashes, and no table has a plaintext email column."""
    from opsgate.security.keyring import KeyRing, master_key
    from opsgate.security.models import encryption_keys

    with ctx.engine.connect() as conn:
        wrapped = conn.execute(select(encryption_keys.c.key_id, encryption_keys.c.wrapped)).all()
    if not wrapped:
        return False, "no data key yet (created on first use of field encryption)"
    ring = KeyRing(ctx.engine, master_key(ctx.settings), ctx.clock)
    for key_id, _ in wrapped:
        ring.aead(key_id)  # unwraps: fails unless the stored key is a ciphertext under the master key
    columns = {t: {c["name"] for c in inspect(ctx.engine).get_columns(t)} for t in ("users", "refresh_tokens")}
    if "email" in columns["users"] or "token" in columns["refresh_tokens"]:
        return False, "a plaintext email or refresh-token column exists"
    return True, (f"{len(wrapped)} data key(s) stored wrapped under the master key and unwrapped by it; "
                  "refresh tokens stored as SHA-256 hashes; emails as ciphertext + blind index")


def backup_encrypted(ctx: Context) -> Result:
    """The given backup is opsgate's encrypted format: it starts with the format's magic, holds no
    SQLite or pg_dump header in clear, and decrypts with the master key (restore checked)."""
    if ctx.backup is None:
        return False, "no backup checked: pass --backup PATH (made by `opsgate backup create`)"
    head = ctx.backup.read_bytes()[:64]
    if not head.startswith(b"OPSGATEBK1"):
        return False, f"{ctx.backup.name} is not an opsgate encrypted backup"
    if b"SQLite format 3" in head or b"PGDMP" in head:
        return False, f"{ctx.backup.name} holds a database header in clear"
    found = restored_backup(ctx)
    return found.report.ok, f"{ctx.backup.name}: sealed chunks (AES-256-GCM), decrypted and restored ({found.kind})"


def restored_backup(ctx: Context) -> Any:
    """:func:`~opsgate.security.backup.verify_backup` of ``ctx.backup`` (given), once per audit."""
    from opsgate.security.backup import verify_backup

    assert ctx.backup is not None, "callers check for a backup first"
    if "backup" not in ctx.cache:
        ctx.cache["backup"] = verify_backup(ctx.settings, ctx.backup)
    return ctx.cache["backup"]


# Authentication & authorization --------------------------------------------------------------
def auth_configured(ctx: Context) -> Result:
    """opsgate's own auth (in place of the seed's Supabase Auth): HS256 pinned with a key of at
    least 32 bytes from the environment, and tokens with ``alg: none`` or another key refused."""
    from opsgate.security.auth import TokenService
    from opsgate.security.errors import Unauthorized

    s = ctx.settings
    service = TokenService(s, ctx.clock)
    claims = jwt.decode(service.issue("readiness-probe", "user"), options={"verify_signature": False})
    forged = [
        jwt.encode(claims, key=None, algorithm="none"),  # type: ignore[arg-type]  # alg none: no key (the forgery probed)
        jwt.encode(claims, "another-key-of-at-least-32-bytes!!", algorithm="HS256"),
    ]
    accepted = 0
    for token in forged:
        try:
            service.verify(token)
            accepted += 1
        except Unauthorized:
            pass
    secret = s.secret("jwt_secret") or ""
    problems = ([f"{accepted} forged token(s) accepted"] if accepted else []) + (
        ["OPSGATE_JWT_SECRET unset or shorter than 32 bytes (a local key file is used)"]
        if len(secret.encode()) < 32 else [])
    if problems:
        return False, "; ".join(problems)
    return True, "HS256 pinned, key from env (>= 32 bytes); alg=none and foreign-key tokens refused"


def rbac_verified(ctx: Context) -> Result:
    """The role ranks refuse what they should (user < operator < admin), and the last run's
    role tests over HTTP passed."""
    from opsgate.errors import OpsgateError
    from opsgate.security.auth import Principal
    from opsgate.security.rbac import require_role

    wrong = []
    for held, needed, allowed in (("user", "operator", False), ("user", "admin", False),
                                  ("operator", "admin", False), ("operator", "operator", True),
                                  ("admin", "operator", True)):
        try:
            require_role(Principal("readiness-probe", (held,)), needed)
            ok = True
        except OpsgateError:
            ok = False
        if ok != allowed:
            wrong.append(f"{held} -> {needed}")
    if wrong:
        return False, f"role checks wrong for {', '.join(wrong)}"
    return suite_evidence(ctx, "tests.security.test_auth_api",
                          "roles enforced on the HTTP API; rank matrix user < operator < admin holds")


# Monitoring & alerting -----------------------------------------------------------------------
def error_thresholds(ctx: Context) -> Result:
    """The error-rate alert rule pages at the seed's thresholds: P2 above 1 %, P1 above 5 %."""
    from opsgate.monitoring.rules import RuleConfig

    cfg = RuleConfig.from_settings(ctx.settings)
    ok = cfg.error_rate_p2_pct <= 1 and cfg.error_rate_p1_pct <= 5
    return ok, (f"error-rate rule: P2 above {cfg.error_rate_p2_pct} %, P1 above {cfg.error_rate_p1_pct} % "
                f"over {cfg.window_s} s windows (seed: 1 % and 5 %)")


def performance_tracked(ctx: Context) -> Result:
    """Latency and error rate of the health window are computed from ``ai_operation_log``."""
    from opsgate.monitoring.health import compute_health

    h = compute_health(ctx.engine, ctx.clock.now(), ctx.settings.health_window_s)
    if not h.operationCount:
        return None, f"no operation calls in the last {ctx.settings.health_window_s} s to measure"
    return True, (f"{h.operationCount} calls: average {h.averageLatency} ms, p95 {h.p95Latency} ms, "
                  f"p99 {h.p99Latency} ms (GET /v1/health, /metrics)")


def audit_trail_recorded(ctx: Context) -> Result:
    """The worker verified the ledger within the last day and recorded it (signals)."""
    from opsgate.monitoring.health import LEDGER_VERIFY
    from opsgate.monitoring.models import signals

    with ctx.engine.connect() as conn:
        row = conn.execute(select(signals.c.ok, signals.c.at).where(signals.c.kind == LEDGER_VERIFY)
                           .order_by(signals.c.id.desc()).limit(1)).first()
    if row is None:
        return False, "no ledger verification recorded: run `opsgate worker`"
    at = row.at
    if ctx.clock.now() - at > AUDIT_TRAIL_MAX_AGE:
        return False, f"the latest recorded verification is from {at:%Y-%m-%dT%H:%MZ} (older than a day)"
    return bool(row.ok), f"latest recorded ledger verification {at:%Y-%m-%dT%H:%MZ}: {'ok' if row.ok else 'FAILED'}"


async def escalation_configured(ctx: Context) -> Result:
    """A P1 reaches a paging channel (PagerDuty or SMS) at once, and a last escalation level
    (admin email or SMS) is set."""
    from opsgate.monitoring.escalation import Contacts, targets
    from opsgate.monitoring.worker import build_notifiers
    from opsgate.providers.http import make_session

    session = make_session()
    try:
        notifiers = build_notifiers(ctx.settings, session)
    finally:
        await session.close()
    contacts = Contacts.from_settings(ctx.settings, frozenset(notifiers))
    paged = {channel for channel, _ in targets("P1", 0, True, contacts)}
    last = bool(ctx.settings.admin_email_to or ctx.settings.admin_sms_to)
    paging = sorted(paged & {"pagerduty", "sms"})
    if not paging:
        return False, f"a P1 notifies {sorted(paged) or 'nobody'}: no paging channel (PagerDuty or SMS)"
    return last, f"a P1 pages through {', '.join(paging)}" + (
        "; last level: admin contacts" if last else "; no last escalation level (OPSGATE_ADMIN_EMAIL_TO/SMS_TO)")


def daily_report_queued(ctx: Context) -> Result:
    """The worker queued yesterday's security report for the team's channels (outbox)."""
    from opsgate.monitoring.models import outbox

    day = (ctx.clock.now() - timedelta(days=1)).date().isoformat()
    with ctx.engine.connect() as conn:
        n = conn.execute(select(func.count()).where(
            outbox.c.notify_key.like(f"security-report:{day}%"))).scalar()
    if not n:
        return False, f"no security report for {day} was queued: run `opsgate worker` (it sends one daily)"
    return True, f"the security report for {day} was queued {n} time(s) (one per channel and recipient)"
