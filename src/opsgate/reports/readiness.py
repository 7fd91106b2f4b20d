"""``opsgate readiness``: the pre-production security audit and deployment checklist, run by the
machine against the running configuration and database.

The items are the seed's lines (docs/seed-phase8.md), each once, under the seed's seven audit
headings and the three phases of its deployment checklist (:data:`SEED_ITEMS`). Each
:class:`Item` is ``pass`` (printed ``[x]``), ``fail``, ``n/a`` (does not apply to this deployment,
e.g. row-level security on SQLite) or ``manual`` (a person must confirm it, with the reason; never
ticked), with the evidence found. Then the seed's success criteria, each row with its evidence
(:mod:`opsgate.reports.criteria`). :func:`run_readiness` returns the :class:`Audit`; the audit is
``ready`` when no blocking item failed (the CLI exits 1 otherwise).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select, text

import opsgate
from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.monitoring.criteria import chain_row
from opsgate.operations.manifest import differences, from_markdown, manifest
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.reports import deploy_checks, live, probes, seed_checks
from opsgate.reports.criteria import deployment_rows
from opsgate.reports.security import key_status
from opsgate.reports.weak_config import weak_settings
from opsgate.security.sanitizer import sanitize

PASS, FAIL, NA, MANUAL = "pass", "fail", "n/a", "manual"
RUNBOOKS = ("deployment", "incident", "monitoring", "rollback", "recovery")
KEY_KINDS = (
    "anthropic",
    "openai",
    "google",
    "github",
    "slack",
    "aws",
    "pem",
    "jwt",
    "bearer",
    "basic",
    "url_cred",
)
PROVIDER_KEYS = {
    "ANTHROPIC_API_KEY": "anthropic_api_key",
    "DEEPSEEK_API_KEY": "deepseek_api_key",
    "GEMINI_API_KEY": "gemini_api_key",
}


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the seed's checklists: ``title`` is the seed's line, ``section`` its heading
    (one of :data:`SECURITY_AUDIT` or :data:`DEPLOYMENT_CHECKLIST`); ``status`` is pass | fail |
    n/a | manual; ``blocking`` items that fail make the deployment not ready."""

    key: str
    title: str
    status: str
    evidence: str
    blocking: bool = True
    section: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """What the checks run against. ``root`` holds ``docs/runbooks`` and the last test run's
    ``artifacts/``; ``backup`` is the latest backup file to verify; ``rehearsal`` a JSON report of
    ``opsgate rehearse``; ``cache`` holds results several checks share (one ledger verification,
    one backup restore per audit)."""

    settings: Settings
    engine: Engine
    clock: Clock
    root: Path
    backup: Path | None = None
    rehearsal: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(slots=True)
class Audit:
    """The checklist, the success criteria (``{criterion, target, actual, status}``) and the verdict."""

    items: list[Item]
    criteria: list[dict[str, str]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when no blocking item failed."""
        return not any(i.blocking and i.status == FAIL for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        """``{"ready", "items": [Item fields], "criteria": [...]}``."""
        return {
            "ready": self.ready,
            "items": [asdict(i) for i in self.items],
            "criteria": self.criteria,
        }


Check = Callable[[Context], Awaitable[tuple[bool | None, str]]]


def _sync(fn: Callable[[Context], tuple[bool | None, str]]) -> Check:
    async def run(ctx: Context) -> tuple[bool | None, str]:
        return await asyncio.to_thread(fn, ctx)

    return run


def package_root() -> Path:
    """The installed ``opsgate`` package directory (the code base scanned for keys)."""
    return Path(opsgate.__file__).resolve().parent


# checks --------------------------------------------------------------------------------------
def no_hardcoded_keys(ctx: Context) -> tuple[bool, str]:
    """Every line of the package's source and data files through the sanitizer's credential
    patterns (provider keys, tokens, PEM keys, auth headers, URL credentials)."""
    files = [
        p
        for p in package_root().rglob("*")
        if p.suffix in (".py", ".toml", ".json", ".md", ".cfg", ".ini")
    ]
    hits = []
    for path in files:
        for n, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            cleaned = sanitize(line)
            if cleaned != line and any(f"[REDACTED:{k}:" in cleaned for k in KEY_KINDS):
                hits.append(f"{path.relative_to(package_root().parent)}:{n}")
    if hits:
        return False, f"credential-shaped strings in {len(hits)} line(s): {', '.join(hits[:5])}"
    return (
        True,
        f"{len(files)} source files scanned with the sanitizer's credential patterns: none found",
    )


def credentials_from_env(ctx: Context) -> tuple[bool, str]:
    """Provider keys come from environment variables (a value or an ``op://`` 1Password
    reference), never from ``opsgate.toml``; the JWT and master keys from env, not local files."""
    s, found, bad = ctx.settings, [], []
    for env, attr in PROVIDER_KEYS.items():
        raw = os.environ.get(env) or os.environ.get(f"OPSGATE_{env}")
        if getattr(s, attr) is None:
            continue
        if raw is None:
            bad.append(f"{env} comes from the config file")
        else:
            found.append(f"{env} from {'1Password (op://)' if raw.startswith('op://') else 'env'}")
    for name, attr in (("OPSGATE_JWT_SECRET", "jwt_secret"), ("OPSGATE_MASTER_KEY", "master_key")):
        if getattr(s, attr) is None:
            bad.append(
                f"{name} unset (a local key file is used; replicas and restores need it from env)"
            )
        elif name not in os.environ:
            bad.append(f"{name} comes from the config file")
        else:
            found.append(f"{name} from env")
    if not any(getattr(s, a) for a in PROVIDER_KEYS.values()) and not s.sandbox:
        bad.append("no provider key is set")
    return not bad, "; ".join(bad or found)


def personal_fields_encrypted(ctx: Context) -> tuple[bool, str]:
    """``users`` has no plaintext email column and every stored address is a field ciphertext."""
    from opsgate.security.crypto import key_id_of
    from opsgate.security.models import users

    columns = {c["name"] for c in inspect(ctx.engine).get_columns("users")}
    if "email" in columns:
        return False, "users has a plaintext email column"
    with ctx.engine.connect() as conn:
        stored = list(
            conn.execute(
                select(users.c.email_ciphertext).where(users.c.email_ciphertext.isnot(None))
            ).scalars()
        )
    clear = sum(1 for c in stored if b"@" in bytes(c))
    keys = sorted({key_id_of(bytes(c)) for c in stored})
    if clear:
        return False, f"{clear} stored address(es) hold an '@' in clear"
    return (
        True,
        f"{len(stored)} email address(es) stored as AES-256-GCM ciphertexts (keys {keys or 'none yet'}), blind index for lookups",
    )


def rls_forced(ctx: Context) -> tuple[bool | None, str]:
    """PostgreSQL: every user-owned table has RLS enabled and forced with policies, and the app
    role neither owns nor bypasses them. SQLite: not applicable."""
    from opsgate.security.rls import USER_OWNED_TABLES

    if ctx.engine.dialect.name != "postgresql":
        return (
            None,
            f"{ctx.engine.dialect.name}: row-level security needs PostgreSQL (the embedded default has one tenant)",
        )
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner), "
                "(SELECT count(*) FROM pg_policies p WHERE p.tablename = c.relname AND p.schemaname = current_schema()) "
                "FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(:t)"
            ),
            {"t": list(USER_OWNED_TABLES)},
        ).all()
        me = conn.execute(
            text(
                "SELECT current_user, rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user"
            )
        ).one()
    bad = [
        f"{r[0]} ({'not enabled' if not r[1] else 'not forced' if not r[2] else 'no policies' if not r[4] else 'owned by the app role'})"
        for r in rows
        if not (r[1] and r[2] and r[4]) or r[3] == me[0]
    ]
    if me[1]:
        bad.append(f"the app role {me[0]} bypasses RLS (superuser or BYPASSRLS)")
    return (
        not bad,
        "; ".join(bad)
        or f"RLS enabled, forced and with policies on {', '.join(r[0] for r in rows)}; app role {me[0]}",
    )


def limits_configured(ctx: Context) -> tuple[bool, str]:
    """A per-user rate limit is set and at least one budget exists, and the limits hold: fails
    when they are counted per process (no ``OPSGATE_REDIS_URL``) while more than one gateway is
    live on the database (:func:`~opsgate.monitoring.providers.shared_database_limits_problem`)."""
    from opsgate.metering.budgets import budget_statuses
    from opsgate.monitoring.providers import shared_database_limits_problem

    s = ctx.settings
    limits = {
        k: getattr(s, k)
        for k in (
            "rate_limit_user_rpm",
            "rate_limit_user_tpm",
            "rate_limit_user_operation_rpm",
            "rate_limit_user_operation_tpm",
        )
        if getattr(s, k)
    }
    budgets = budget_statuses(ctx.engine, ctx.clock.now())
    text_ = f"rate limits {limits or 'all off'}; {len(budgets)} budget(s)"
    shared = shared_database_limits_problem(s, ctx.engine, ctx.clock.now())
    if shared is not None:  # the limits hold per gateway only: N live gateways admit N x each
        return False, f"{text_}; {shared}"
    return bool(limits) and bool(budgets), text_


def cors_not_wildcard(ctx: Context) -> tuple[bool, str]:
    """No wildcard or plain-http origin in ``cors_origins``."""
    bad = [f for f in weak_settings(ctx.settings) if f["setting"] == "cors_origins"]
    if bad:
        return False, "; ".join(f"{f['value']}: {f['why']}" for f in bad)
    return True, f"allowlist {ctx.settings.cors_origins or '(empty: no cross-origin access)'}"


def csrf_on(ctx: Context) -> tuple[bool, str]:
    """The app built from the running settings has the CSRF middleware (signed double submit)."""
    from opsgate.app import create_app
    from opsgate.security.sessions import CSRFMiddleware

    app = create_app(ctx.settings, ctx.clock)
    classes: list[object] = [m.cls for m in app.user_middleware]
    on = CSRFMiddleware in classes
    return (
        on,
        "CSRFMiddleware checks every unsafe request with a session cookie"
        if on
        else "no CSRF middleware",
    )


async def provider_tls(ctx: Context) -> tuple[bool, str]:
    """Provider base URLs are https and the provider session refuses TLS below 1.2."""
    import ssl

    from opsgate.providers.http import make_session

    s = ctx.settings
    plain = [
        f
        for f in weak_settings(s)
        if f["setting"].endswith("_base_url") and "twilio" not in f["setting"]
    ]
    session = make_session()
    try:
        context = getattr(session.connector, "_ssl", None)
    finally:
        await session.close()
    minimum = context.minimum_version if isinstance(context, ssl.SSLContext) else None
    tls_ok = minimum is not None and minimum >= ssl.TLSVersion.TLSv1_2
    if plain:
        return False, "; ".join(f"{f['setting']}={f['value']}" for f in plain)
    return (
        tls_ok,
        f"https provider URLs; provider session minimum TLS version {minimum.name if minimum else 'unknown'}",
    )


def key_ages(ctx: Context) -> tuple[bool, str]:
    """The current field-encryption key and dated provider keys are within the rotation policy."""
    status = key_status(ctx.engine, ctx.settings, ctx.clock.now())
    current = next((k for k in status["keys"] if k["state"] == "current"), None)
    if current is None:
        return False, "no data key in the ring yet (created on first use of field encryption)"
    if status["rotation_due"]:
        return (
            False,
            f"data key {current['key_id']} is {current['age_days']} days old (policy {status['policy_days']})",
        )
    return (
        True,
        f"data key {current['key_id']} is {current['age_days']} days old (policy {status['policy_days']} days)",
    )


def fallback_configured(ctx: Context) -> tuple[bool, str]:
    """Every operation's route has a second provider, ``opsgate config check`` finds no problem
    (unknown provider, missing key outside the sandbox, missing price), and no provider is
    reported unavailable or demoted now."""
    from opsgate.metering.prices import PriceBook
    from opsgate.monitoring.providers import outages
    from opsgate.routing.effective import config_problems
    from opsgate.routing.policy import RouteConfigError, policies_for

    now = ctx.clock.now()
    problems = config_problems(ctx.settings, PriceBook.from_settings(ctx.settings, ctx.clock.now), now)
    try:
        policies = policies_for(ctx.settings)
    except RouteConfigError:  # already among ``problems``
        policies = {}
    short = sorted(op for op, p in policies.items() if len({t.provider for t in p.chain}) < 2)
    providers = sorted({t.provider for p in policies.values() for t in p.chain})
    with ctx.engine.connect() as conn:
        down = sorted(outages(conn, now))
    bad = (
        [f"config check: {line}" for line in problems]
        + ([f"no fallback for {', '.join(short)}"] if short else [])
        + ([f"unavailable now: {', '.join(down)}"] if down else [])
    )
    return not bad, "; ".join(bad) or (
        f"chain {' -> '.join(providers)} for all {len(policies)} operations; "
        "`opsgate config check` ok; all available"
    )


def ledger_verified_anchored(ctx: Context) -> tuple[bool, str]:
    """The whole ledger verifies (signatures with the signing key, the directory anchor's
    copies) and the latest checkpoint is on an external anchor."""
    from opsgate.ledger.anchors import DirectoryAnchor
    from opsgate.ledger.models import ledger_anchor_state, ledger_checkpoints
    from opsgate.ledger.scheduled import signer_for
    from opsgate.ledger.verify import format_summary, verify

    s = ctx.settings
    verifier = (
        signer_for(s, create=False).verifier() if Path(s.ledger_signing_key_file).exists() else None
    )
    notes = DirectoryAnchor(s.ledger_anchor_dir).read() if s.ledger_anchor_dir and verifier else []
    report = verify(ctx.engine, verifier=verifier, anchored=notes)
    with ctx.engine.connect() as conn:
        anchored = conn.execute(select(ledger_anchor_state.c.anchored_size)).scalars().all()
        latest = conn.execute(
            select(ledger_checkpoints.c.size).order_by(ledger_checkpoints.c.size.desc()).limit(1)
        ).scalar()
    on_anchor = bool(latest and max(anchored, default=0) >= latest)
    why = (
        ""
        if on_anchor
        else "; the latest checkpoint is on no external anchor"
        if latest
        else "; no checkpoint signed yet"
    )
    return report.ok and on_anchor, format_summary(report) + why


def backup_verified(ctx: Context) -> tuple[bool, str]:
    """The given backup decrypts, restores into a scratch database and its ledger verifies."""
    from opsgate.ledger.verify import format_summary

    if ctx.backup is None:
        return False, "no backup checked: pass --backup PATH (made by `opsgate backup create`)"
    found = seed_checks.restored_backup(ctx)
    return (
        found.report.ok,
        f"{ctx.backup.name}: {found.kind}, {found.size} bytes, restored ledger {format_summary(found.report)}",
    )


def migrations_current_check(ctx: Context) -> tuple[bool, str]:
    """The database is at the head of every migration branch."""
    from opsgate.store.db import migrations_current

    ok = migrations_current(ctx.engine)
    return ok, "at the latest migration" if ok else "behind: run `opsgate db upgrade`"


def runbooks_present(ctx: Context) -> tuple[bool, str]:
    """``docs/runbooks/<name>.md`` exists for each runbook and quotes an ``opsgate`` command."""
    folder = ctx.root / "docs" / "runbooks"
    missing = [
        n
        for n in RUNBOOKS
        if not (folder / f"{n}.md").is_file()
        or "opsgate " not in (folder / f"{n}.md").read_text(encoding="utf-8")
    ]
    return (
        not missing,
        f"missing or without commands: {', '.join(missing)}"
        if missing
        else f"{len(RUNBOOKS)} runbooks in {folder}",
    )


def privacy_manifest(ctx: Context) -> tuple[bool, str]:
    """Each operation's deployed privacy settings (what is pseudonymised) give the row that
    ``docs/privacy.md``'s manifest documents."""
    page = ctx.root / "docs" / "privacy.md"
    if not page.is_file():
        return False, f"{page} not found"
    documented = from_markdown(page.read_text(encoding="utf-8"))
    deployed = manifest(PrivacyPolicy.from_settings(ctx.settings))
    differ = differences(documented, deployed)
    if differ:
        return False, f"deployed settings differ from {page.name} for: {', '.join(differ)}"
    return True, f"{len(deployed)} operations as documented in {page}"


def no_pii(ctx: Context) -> tuple[bool, str]:
    """No personal data in logs (an email canary comes out redacted) nor sent to providers beyond
    what the privacy manifest documents (:func:`privacy_manifest`)."""
    logged, log_evidence = probes.pii_canary()
    sent, sent_evidence = privacy_manifest(ctx)
    return logged and sent, f"logs: {log_evidence}; providers: {sent_evidence}"


async def _sanitizer(ctx: Context) -> tuple[bool, str]:
    return probes.sanitizer_canary()


async def _cache(ctx: Context) -> tuple[bool, str]:
    return probes.encrypted_cache()


SECURITY_AUDIT = (
    "Secret Management Audit",
    "Code Privacy Audit",
    "Provider Integration Security",
    "Hash Chain Integrity Audit",
    "Data Encryption Audit",
    "Authentication & Authorization",
    "Monitoring & Alerting",
)
"""The seed's seven audit headings (docs/seed-phase8.md), in its order."""
DEPLOYMENT_CHECKLIST = ("Pre-Deployment", "Deployment Day", "Post-Deployment")
"""The seed's three checklist phases. Deployment-day and post-deployment items record the
deployment's progress and never block readiness; the audit and pre-deployment items do."""
DERIVED = "derived"
"""Marks an item computed from the others (the audit's verdict, the success criteria)."""

Entry = tuple[str, str, str, "Check | str"]
SEED_ITEMS: tuple[Entry, ...] = (
    # (section, the seed's line, key, check -- or the reason a person must confirm it)
    ("Secret Management Audit", "No hardcoded API keys in source code", "no_hardcoded_keys",
     _sync(no_hardcoded_keys)),
    ("Secret Management Audit", "Environment variables for all credentials", "credentials_from_env",
     _sync(credentials_from_env)),
    ("Secret Management Audit", "1Password integration verified", "onepassword_verified",
     seed_checks.onepassword_verified),
    ("Secret Management Audit", "Log sanitization for sensitive data", "sanitizer_active", _sanitizer),
    ("Secret Management Audit", "Encrypted secrets cache with AES-256-GCM", "secrets_cache_encrypted",
     _cache),
    ("Secret Management Audit", "Pre-execution logging before secret access", "pre_access_logging",
     lambda ctx: probes.pre_access_logging(ctx.clock)),
    ("Code Privacy Audit", "No PII in logs or responses", "no_pii",
     _sync(no_pii)),
    ("Code Privacy Audit", "Email addresses encrypted at rest", "personal_fields_encrypted",
     _sync(personal_fields_encrypted)),
    ("Code Privacy Audit", "User data isolation verified (RLS policies)", "rls_forced", _sync(rls_forced)),
    ("Code Privacy Audit", "No SQL injection vulnerabilities", "no_sql_injection",
     _sync(seed_checks.no_sql_injection)),
    ("Code Privacy Audit", "No XSS vulnerabilities in React components", "no_xss",
     _sync(seed_checks.no_xss)),
    ("Code Privacy Audit", "Rate limiting implemented", "limits_configured", _sync(limits_configured)),
    ("Code Privacy Audit", "CORS properly configured", "cors_not_wildcard", _sync(cors_not_wildcard)),
    ("Code Privacy Audit", "CSRF tokens validated", "csrf_on", _sync(csrf_on)),
    ("Provider Integration Security", "HTTPS enforced for all API calls", "https_everywhere",
     _sync(seed_checks.https_everywhere)),
    ("Provider Integration Security", "TLS 1.2+ for provider communications", "provider_tls",
     provider_tls),
    ("Provider Integration Security", "API key rotation strategy defined", "provider_key_rotation",
     _sync(seed_checks.provider_key_rotation)),
    ("Provider Integration Security", "Fallback providers secure", "fallback_providers",
     _sync(fallback_configured)),
    ("Provider Integration Security", "Error messages don't leak provider details",
     "provider_errors_sanitised", lambda ctx: live.provider_errors_sanitised(ctx.settings, ctx.clock)),
    ("Hash Chain Integrity Audit", "Hash chain immutable records", "ledger_append_only",
     _sync(seed_checks.ledger_append_only)),
    ("Hash Chain Integrity Audit", "Pre-execution logging", "intent_before_result",
     _sync(seed_checks.intent_before_result)),
    ("Hash Chain Integrity Audit", "Discord webhook as external record", "discord_anchor",
     _sync(seed_checks.discord_anchor)),
    ("Hash Chain Integrity Audit", "Entry linking with previous hash", "ledger_links",
     _sync(seed_checks.ledger_links)),
    ("Hash Chain Integrity Audit", "Timestamp validation", "ledger_timestamps",
     _sync(seed_checks.ledger_timestamps)),
    ("Hash Chain Integrity Audit", "No log modification possible", "ledger_verified_anchored",
     _sync(ledger_verified_anchored)),
    ("Data Encryption Audit", "Sensitive data encrypted at rest", "data_keys_wrapped",
     _sync(seed_checks.data_keys_wrapped)),
    ("Data Encryption Audit", "Encryption keys rotated monthly", "key_ages", _sync(key_ages)),
    ("Data Encryption Audit", "Backup encryption verified", "backup_encrypted",
     _sync(seed_checks.backup_encrypted)),
    ("Data Encryption Audit", "Decryption performance acceptable (<100ms)", "decrypt_time",
     _sync(lambda ctx: probes.decrypt_time(ctx.settings, ctx.engine, ctx.clock))),
    ("Authentication & Authorization", "Supabase Auth properly configured", "auth_configured",
     _sync(seed_checks.auth_configured)),
    ("Authentication & Authorization", "JWT token expiration set (1 hour)", "jwt_expiry",
     _sync(lambda ctx: probes.jwt_expiry(ctx.settings, ctx.clock))),
    ("Authentication & Authorization", "Refresh token rotation implemented", "refresh_rotation",
     _sync(lambda ctx: probes.refresh_rotation(ctx.settings))),
    ("Authentication & Authorization", "Role-based access control verified", "rbac_verified",
     _sync(seed_checks.rbac_verified)),
    ("Authentication & Authorization", "Feature toggle authorization working", "toggle_authorization",
     lambda ctx: live.toggle_refuses(ctx.settings, ctx.clock)),
    ("Monitoring & Alerting", "Discord logging on all operations", "discord_operations",
     ("opsgate does not post each operation to Discord (rate limits, personal data): every "
             "operation is a ledger entry whose checkpoints go to the Discord anchor (see 'Discord "
             "webhook as external record') and alerts go to Discord; a person decides that suffices")),
    ("Monitoring & Alerting", "Error threshold monitoring", "error_thresholds",
     _sync(seed_checks.error_thresholds)),
    ("Monitoring & Alerting", "Performance metrics tracking", "performance_tracked",
     _sync(seed_checks.performance_tracked)),
    ("Monitoring & Alerting", "Hash chain audit trail", "audit_trail_recorded",
     _sync(seed_checks.audit_trail_recorded)),
    ("Monitoring & Alerting", "Automated alert escalation for critical errors", "escalation_configured",
     seed_checks.escalation_configured),
    ("Monitoring & Alerting", "Daily security report generation", "daily_report_queued",
     _sync(seed_checks.daily_report_queued)),
    ("Pre-Deployment", "All tests passing (490+)", "tests_passing", _sync(deploy_checks.tests_passing)),
    ("Pre-Deployment", "Code review completed", "code_review",
     ("a person reviews the change; the repository's history is not a review record")),
    ("Pre-Deployment", "Security audit passed", "security_audit_passed", DERIVED),
    ("Pre-Deployment", "Performance benchmarks met", "benchmarks_met",
     ("`./dev bench overhead` (and the others in bench/) print ratios measured in one run on "
             "the machine at hand; a person compares them with the goals")),
    ("Pre-Deployment", "Documentation complete", "runbooks_present", _sync(runbooks_present)),
    ("Pre-Deployment", "Database migration tested on staging", "migration_staging",
     ("staging is outside opsgate's reach: restore the latest backup there "
             "(`opsgate backup restore`) and run `opsgate db upgrade` on it")),
    ("Pre-Deployment", "Backup strategy verified", "backup_verified", _sync(backup_verified)),
    ("Pre-Deployment", "Rollback procedure documented", "rollback_documented",
     _sync(deploy_checks.runbook("rollback", "opsgate rollout rollback"))),
    ("Pre-Deployment", "Incident response plan ready", "incident_plan",
     _sync(deploy_checks.runbook("incident", "opsgate incidents"))),
    ("Pre-Deployment", "Team trained on Phase 8 features", "team_trained",
     ("training is confirmed by people (runbooks in docs/runbooks, the dashboard)")),
    ("Deployment Day", "Backup database taken", "backup_taken", _sync(deploy_checks.backup_taken)),
    ("Deployment Day", "Monitoring dashboards active", "dashboards_active",
     _sync(deploy_checks.dashboards_active)),
    ("Deployment Day", "Alert channels verified (Discord, email, SMS)", "alert_channels",
     lambda ctx: live.alert_channels(ctx.settings, ctx.clock)),
    ("Deployment Day", "Support team ready", "support_team",
     ("on-call rotation and escalation contacts are agreed by people")),
    ("Deployment Day", "Database migration executed", "migrations_current",
     _sync(migrations_current_check)),
    ("Deployment Day", "Canary deployment (5%)", "canary_started", _sync(deploy_checks.canary_started)),
    ("Deployment Day", "Health checks passing", "health_checks", _sync(deploy_checks.health_checks)),
    ("Deployment Day", "Error rate < 1%", "deploy_error_rate", _sync(deploy_checks.window_error_rate)),
    ("Deployment Day", "Latency acceptable", "latency_acceptable", _sync(deploy_checks.window_latency)),
    ("Post-Deployment", "Canary phase monitoring 24 hours", "canary_watched",
     _sync(deploy_checks.watched(0))),
    ("Post-Deployment", "Success metrics verified", "success_metrics", DERIVED),
    ("Post-Deployment", "Gradual rollout to 25%", "rollout_25", _sync(deploy_checks.reached(1, 25))),
    ("Post-Deployment", "Monitor 12 hours", "watched_25", _sync(deploy_checks.watched(1))),
    ("Post-Deployment", "Gradual rollout to 100%", "rollout_100", _sync(deploy_checks.reached(2, 100))),
    ("Post-Deployment", "Monitor 24 hours", "watched_100", _sync(deploy_checks.watched(2))),
    ("Post-Deployment", "Final verification", "final_verification",
     _sync(deploy_checks.final_verification)),
    ("Post-Deployment", "Team debriefing", "team_debriefing",
     ("a meeting of the people who ran the rollout: nothing a machine can observe")),
)
"""Every line of the seed's security audit and deployment checklist, once: checked by a probe,
derived from the other items, or manual with the reason a person must confirm it."""


async def run_item(ctx: Context, key: str, title: str, check: Check, section: str = "") -> Item:
    """Run one check; an exception is a failure whose evidence names it (sanitized)."""
    blocking = section not in DEPLOYMENT_CHECKLIST[1:]
    try:
        ok, evidence = await check(ctx)
    except Exception as exc:  # noqa: BLE001 (a crashing check is a failed item, not a crash)
        return Item(key, title, FAIL, sanitize(f"check raised {type(exc).__name__}: {exc}")[:500],
                    blocking, section)
    return Item(key, title, NA if ok is None else PASS if ok else FAIL, sanitize(evidence), blocking,
                section)


async def run_readiness(ctx: Context, only: set[str] | None = None) -> Audit:
    """Run every check (or those in ``only``) one after another in the seed's order, list the
    manual items, derive the audit's verdict and the success metrics, and fill the success
    criteria (:func:`opsgate.reports.criteria.deployment_rows`)."""
    items: list[Item] = []
    for section, line, key, check in SEED_ITEMS:
        if isinstance(check, str):
            if check != DERIVED:
                items.append(Item(key, line, MANUAL, check, blocking=False, section=section))
            elif only is None or key in only:
                items.append(Item(key, line, NA, "", section=section))  # filled in below
        elif only is None or key in only:
            items.append(await run_item(ctx, key, line, check, section))
    ledger = next((i for i in items if i.key == "ledger_verified_anchored"), None)
    chain = chain_row(
        None if ledger is None else ledger.evidence.startswith("OK"),
        "" if ledger is None else ledger.evidence,
        f"verify() over this database's ledger ({ctx.clock.now():%Y-%m-%dT%H:%M:%SZ})",
    )
    criteria = deployment_rows(
        ctx.engine, ctx.settings, ctx.clock.now(), ctx.root / "artifacts", chain, ctx.rehearsal
    )
    return Audit([_derive(i, items, criteria) for i in items], criteria)


def _derive(item: Item, items: list[Item], criteria: list[dict[str, str]]) -> Item:
    """The two derived items: the security audit passed (no blocking item of its seven sections
    failed), and the success metrics verified (all nine criteria pass)."""
    if item.key == "security_audit_passed":
        failed = [i.key for i in items if i.section in SECURITY_AUDIT and i.blocking and i.status == FAIL]
        ran = sum(1 for i in items if i.section in SECURITY_AUDIT and i.status != MANUAL)
        ok, evidence = not failed and ran > 0, (
            f"failed: {', '.join(failed)}" if failed else f"{ran} audit item(s) checked, none failed")
    elif item.key == "success_metrics":
        short = [f"{c['criterion']} ({c['status']})" for c in criteria if c["status"] != "pass"]
        ok, evidence = not short, (f"not passing: {', '.join(short)}" if short
                                   else "all nine success criteria pass")
    else:
        return item
    return Item(item.key, item.title, PASS if ok else FAIL, evidence, item.blocking, item.section)
