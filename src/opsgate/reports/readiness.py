"""``opsgate readiness``: the pre-production security audit and deployment checklist, run by the
machine against the running configuration and database.

Each :class:`Item` is ``pass`` (printed ``[x]``), ``fail``, ``n/a`` (does not apply to this
deployment, e.g. row-level security on SQLite) or ``manual`` (a person must confirm it; never
ticked), with the evidence found. Then the seed's success criteria with actual values from a
rehearsal report (``opsgate rehearse --report PATH``) or, without one, from the latest health
window of ``ai_operation_log``. :func:`run_readiness` returns the :class:`Audit`; the audit is
``ready`` when no blocking item failed (the CLI exits 1 otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select, text

import opsgate
from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.operations.manifest import differences, from_markdown, manifest
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.reports import live, probes
from opsgate.reports.criteria import criteria_from_rehearsal, criteria_from_window
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
MANUAL_ITEMS = (
    ("team_trained", "Team trained on the runbooks and the dashboard"),
    ("on_call", "On-call rotation and escalation contacts agreed"),
    ("provider_agreements", "Data processing agreements in place with every AI provider"),
    ("security_review", "External security review / penetration test done"),
    ("rollback_rehearsed", "A rollback rehearsed by the on-call team on staging"),
)


@dataclass(frozen=True, slots=True)
class Item:
    """One checklist line: ``status`` is pass | fail | n/a | manual; ``blocking`` items that fail
    make the deployment not ready."""

    key: str
    title: str
    status: str
    evidence: str
    blocking: bool = True


@dataclass(frozen=True, slots=True)
class Context:
    """What the checks run against. ``root`` holds ``docs/runbooks``; ``backup`` is the latest
    backup file to verify; ``rehearsal`` a JSON report of ``opsgate rehearse``."""

    settings: Settings
    engine: Engine
    clock: Clock
    root: Path
    backup: Path | None = None
    rehearsal: Path | None = None


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


def project_root() -> Path:
    """The checkout holding ``pyproject.toml`` above the package (src layout), else the cwd."""
    candidate = package_root().parents[1]
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


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
    """A per-user rate limit is set and at least one budget exists."""
    from opsgate.metering.budgets import budget_statuses

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
    """Every operation's route has a second provider, each has a key (or the sandbox), and none
    is reported unavailable or demoted now."""
    from opsgate.monitoring.providers import outages
    from opsgate.routing.policy import policies_for

    policies = policies_for(ctx.settings)
    short = sorted(op for op, p in policies.items() if len({t.provider for t in p.chain}) < 2)
    providers = sorted({t.provider for p in policies.values() for t in p.chain})
    keyless = [
        p
        for p in providers
        if f"{p}_api_key" in type(ctx.settings).model_fields
        and getattr(ctx.settings, f"{p}_api_key") is None
        and not ctx.settings.sandbox
    ]
    with ctx.engine.connect() as conn:
        down = sorted(outages(conn, ctx.clock.now()))
    bad = (
        ([f"no fallback for {', '.join(short)}"] if short else [])
        + ([f"no key for {', '.join(keyless)}"] if keyless else [])
        + ([f"unavailable now: {', '.join(down)}"] if down else [])
    )
    return not bad, "; ".join(
        bad
    ) or f"chain {' -> '.join(providers)} for all {len(policies)} operations; all available"


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
    from opsgate.security.backup import verify_backup

    if ctx.backup is None:
        return False, "no backup checked: pass --backup PATH (made by `opsgate backup create`)"
    found = verify_backup(ctx.settings, ctx.backup)
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


async def _sanitizer(ctx: Context) -> tuple[bool, str]:
    return probes.sanitizer_canary()


async def _cache(ctx: Context) -> tuple[bool, str]:
    return probes.encrypted_cache()


CHECKS: tuple[tuple[str, str, Check], ...] = (
    ("no_hardcoded_keys", "No hard-coded keys in the code base", _sync(no_hardcoded_keys)),
    (
        "credentials_from_env",
        "Credentials from environment variables or 1Password",
        _sync(credentials_from_env),
    ),
    ("sanitizer_active", "Sanitizer active on the logging path (canary line)", _sanitizer),
    ("secrets_cache_encrypted", "Secrets cache encrypted (AES-256-GCM)", _cache),
    (
        "pre_access_logging",
        "Secret access written to the ledger before the read",
        lambda ctx: probes.pre_access_logging(ctx.clock),
    ),
    (
        "personal_fields_encrypted",
        "Personal fields encrypted at rest",
        _sync(personal_fields_encrypted),
    ),
    ("rls_forced", "Row-level security present and forced (PostgreSQL)", _sync(rls_forced)),
    ("limits_configured", "Rate limiting and budgets configured", _sync(limits_configured)),
    ("cors_not_wildcard", "CORS is an allowlist, not a wildcard", _sync(cors_not_wildcard)),
    ("csrf_on", "CSRF protection on", _sync(csrf_on)),
    ("provider_tls", "Provider URLs https with TLS >= 1.2", provider_tls),
    ("key_ages", "Key ages within the rotation policy", _sync(key_ages)),
    ("fallback_providers", "Fallback providers configured and healthy", _sync(fallback_configured)),
    (
        "provider_errors_sanitised",
        "Provider errors sanitised (sandbox probe)",
        lambda ctx: live.provider_errors_sanitised(ctx.settings, ctx.clock),
    ),
    ("ledger_verified_anchored", "Ledger verified and anchored", _sync(ledger_verified_anchored)),
    ("backup_verified", "Latest backup verified", _sync(backup_verified)),
    (
        "decrypt_time",
        "Decrypting a field takes < 100 ms (measured)",
        _sync(lambda ctx: probes.decrypt_time(ctx.settings, ctx.engine, ctx.clock)),
    ),
    (
        "jwt_expiry",
        "Access tokens expire after 1 hour",
        _sync(lambda ctx: probes.jwt_expiry(ctx.settings, ctx.clock)),
    ),
    (
        "refresh_rotation",
        "Refresh tokens rotate; reuse revokes the family",
        _sync(lambda ctx: probes.refresh_rotation(ctx.settings)),
    ),
    (
        "alert_channels",
        "Alert channels configured (a test notification to each)",
        lambda ctx: live.alert_channels(ctx.settings, ctx.clock),
    ),
    ("migrations_current", "Database migrations current", _sync(migrations_current_check)),
    ("runbooks_present", "Runbooks present", _sync(runbooks_present)),
    (
        "privacy_manifest",
        "Deployed operations send what the privacy manifest documents",
        _sync(privacy_manifest),
    ),
)
"""Every machine-verifiable item: (key, title, check). Each check returns (True | False | None
for not applicable, evidence)."""


async def run_item(ctx: Context, key: str, title: str, check: Check) -> Item:
    """Run one check; an exception is a failure whose evidence names it (sanitized)."""
    try:
        ok, evidence = await check(ctx)
    except Exception as exc:  # noqa: BLE001 (a crashing check is a failed item, not a crash)
        return Item(key, title, FAIL, sanitize(f"check raised {type(exc).__name__}: {exc}")[:500])
    return Item(key, title, NA if ok is None else PASS if ok else FAIL, sanitize(evidence))


async def run_readiness(ctx: Context, only: set[str] | None = None) -> Audit:
    """Run every check (or those in ``only``) one after another, list the manual items, and
    fill the success criteria from ``ctx.rehearsal`` or the latest health window."""
    items = [
        await run_item(ctx, key, title, check)
        for key, title, check in CHECKS
        if only is None or key in only
    ]
    items += [
        Item(
            key,
            title,
            MANUAL,
            "a person confirms this; never ticked by the machine",
            blocking=False,
        )
        for key, title in MANUAL_ITEMS
    ]
    if ctx.rehearsal is not None:
        criteria = criteria_from_rehearsal(json.loads(ctx.rehearsal.read_text(encoding="utf-8")))
    else:
        ledger = next((i for i in items if i.key == "ledger_verified_anchored"), None)
        criteria = criteria_from_window(
            ctx.engine,
            ctx.settings,
            ctx.clock.now(),
            None if ledger is None else ledger.evidence.startswith("OK"),
        )
    return Audit(items, criteria)
