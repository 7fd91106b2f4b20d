"""``opsgate toggles``, ``opsgate rollout`` and ``opsgate variants`` (Typer apps registered by
``opsgate.cli``).

They act on ``OPSGATE_DATABASE_URL`` directly as the operator ``cli:<login>`` and write every
change to the ledger, like the admin API. Exit status: 0 done, 1 ``toggles check`` refused the
user or ``rollout rollback`` left some rollout not rolled back, 2 an error (printed, never a
traceback).
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from opsgate.errors import OpsgateError
from opsgate.numbers import cli_int
from opsgate.rollout.controller import ACTIVE, Plan, State
from opsgate.rollout.plans import load_plan
from opsgate.rollout.service import RolloutService, ToggleChange
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import VariantBook, checked_variants
from opsgate.routing.effective import checked_routes
from opsgate.routing.policy import OPERATION_IDS, RouteConfigError
from opsgate.security.errorline import error, fail
from opsgate.security.operator_input import REASON_MAX_CHARS, check_identifier, operator_text

toggles_app = typer.Typer(help="Feature toggles per operation.", no_args_is_help=True)
rollout_app = typer.Typer(help="Canary rollouts with automatic rollback.", no_args_is_help=True)
out = Console()


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


@contextmanager
def _service() -> Iterator[RolloutService]:
    from opsgate.operations import OPERATIONS
    from opsgate.runtime import cli_services

    try:
        with cli_services() as services:
            services.rollout.ensure_toggles(OPERATIONS)
            yield services.rollout
    except OpsgateError as exc:
        fail(f"{exc.code}: {exc.detail}")
    except OSError as exc:
        fail(f"{type(exc).__name__}: {exc}")


@toggles_app.command("list")
def toggles_list() -> None:
    """Every toggle with its adoption rate (opted-in users / eligible users)."""
    with _service() as svc:
        toggles, adoption = svc.list_toggles(), svc.adoption()
    table = Table(title="feature toggles")
    for name in ("operation", "enabled", "rollout %", "group id", "opt-in", "kill switch",
                 "adoption", "updated by"):
        table.add_column(name)
    for t in toggles:
        a = adoption[t.operation]
        rate = f"{a['opted_in']}/{a['eligible']} ({a['rate_ppm'] / 10_000:.1f} %)" if a["eligible"] else "-"
        table.add_row(t.operation, _yes(t.enabled), str(t.rollout_percentage), t.group_id,
                      _yes(t.opt_in_required), _yes(t.kill_switch), rate, t.updated_by)
    out.print(table)


@toggles_app.command("set")
def toggles_set(
    operation: str = typer.Argument(..., help="Operation id, e.g. email-compose."),
    enable: bool = typer.Option(None, "--enable/--disable", help="Turn the operation on or off."),
    percent: int = typer.Option(None, "--percent", parser=cli_int(0, 100), help="Rollout percentage 0..100."),
    group_id: str = typer.Option(None, "--group-id", help="Bucketing group id (Unleash groupId)."),
    opt_in: bool = typer.Option(None, "--opt-in/--no-opt-in", help="Require users to opt in."),
    kill: bool = typer.Option(None, "--kill/--no-kill", help="Engage or release the kill switch."),
    reason: str = typer.Option("", help="Why (written to the ledger)."),
) -> None:
    """Change OPERATION's toggle; the change is written to the ledger."""
    change = ToggleChange(enabled=enable, rollout_percentage=percent, group_id=group_id,
                          opt_in_required=opt_in, kill_switch=kill)
    with _service() as svc:
        if group_id is not None:
            check_identifier("--group-id", group_id)
        t = svc.set_toggle(operation, change, _actor(),
                           operator_text("--reason", reason, max_length=REASON_MAX_CHARS))
    out.print(f"{t.operation}: enabled={_yes(t.enabled)} rollout={t.rollout_percentage} % "
              f"group={t.group_id} opt-in={_yes(t.opt_in_required)} kill-switch={_yes(t.kill_switch)}")


@toggles_app.command("check")
def toggles_check(
    operation: str = typer.Argument(..., help="Operation id."),
    user_id: str = typer.Argument(..., help="The user to check."),
) -> None:
    """Whether USER_ID gets OPERATION, the user's bucket (1-100) and why. Exit 0 yes, 1 no;
    exit 2 for an unknown operation."""
    _known_operation(operation)
    with _service() as svc:
        snapshot = ToggleSnapshot(svc.engine, svc.clock)
        verdict = snapshot.check(operation, user_id)
        toggle = snapshot.toggles().get(operation)
    rollout = f", rollout {toggle.rollout_percentage} %" if toggle else ""
    out.print(f"{operation} for {user_id}: {'yes' if verdict.allowed else 'no'} "
              f"(bucket {verdict.bucket}{rollout}; {verdict.reason}: {verdict.explain()})")
    raise typer.Exit(0 if verdict.allowed else 1)


@rollout_app.command("start")
def rollout_start(
    operations: list[str] = typer.Argument(..., help="Operation ids to roll out together."),
    plan: Path = typer.Option(None, "--plan", exists=True, dir_okay=False,
                              help="Plan file (JSON or TOML); default 5 %/24 h, 25 %/12 h, 100 %/12 h, 48 h."),
    variant: str = typer.Option(None, "--variant",
                                help="Release this variant of the one OPERATION (opsgate variants show OP)."),
    shadow: int = typer.Option(None, "--shadow", parser=cli_int(1, 100),
                               help="With --variant: first a shadow stage, PERCENT of live calls also sent to it."),
) -> None:
    """Start a canary rollout of OPERATIONS at the plan's first stage (with --variant: the
    variant's share of the operation's users grows by stage instead; with --shadow, after a shadow
    stage that serves it to nobody)."""
    book = _book() if variant is not None else None
    with _service() as svc:
        svc.variants = book
        chosen = load_plan(plan) if plan else Plan()
        r = svc.start_rollout(operations, chosen, _actor(), variant, shadow)
    what = f"variant {variant} of " if variant else ""
    at = f"shadowing {shadow} % of live calls" if shadow else f"at {chosen.percentage(0)} %"
    out.print(f"rollout {r.id} started: {what}{', '.join(r.operations)} {at}")


@rollout_app.command("status")
def rollout_status(
    all_: bool = typer.Option(False, "--all", help="Include finished rollouts."),
) -> None:
    """Rollouts with their stage and the latest decisions."""
    with _service() as svc:
        found = svc.list_rollouts(None if all_ else ACTIVE | {State.ROLLING_BACK})
        histories = {r.id: svc.history(r.id)[-5:] for r in found}
        shadows = {r.id: svc.shadow(r) for r in found}
    if not found:
        out.print("no rollouts" + ("" if all_ else " in progress (--all shows finished ones)"))
        return
    for r in found:
        s = r.state
        label = s.plan.stage_label(s.stage_index)
        stage = label if label == "observation" else f"stage {label}"
        out.print(f"[bold]rollout {r.id}[/bold] {', '.join(r.operations)}: {s.state}, {stage}, "
                  f"{s.plan.percentage(s.stage_index)} % since {s.stage_started_at:%Y-%m-%d %H:%M} UTC")
        if (shadow := shadows[r.id]) is not None:
            out.print("  " + _shadow_line(shadow.to_json()))
        for h in histories[r.id]:
            out.print(f"  {h['at'][:19]}  {h['action']:<9} {h['state_after']:<19} {h['reason']}")


@rollout_app.command("advance")
def rollout_advance(
    rollout_id: int = typer.Option(None, "--id", parser=cli_int(1, 2**63 - 1), help="Rollout id (default: the only one in progress)."),
) -> None:
    """Promote a rollout to its next stage now."""
    with _service() as svc:
        rid = rollout_id if rollout_id is not None else _only_active(svc)
        d = svc.advance(rid, _actor())
    out.print(f"rollout {rid}: {d.action.value} -> {d.after.state} at {d.after.plan.percentage(d.after.stage_index)} %")


@rollout_app.command("rollback")
def rollout_rollback(
    operations: list[str] = typer.Argument(None, help="Operations to roll back."),
    all_: bool = typer.Option(False, "--all", help="Every operation."),
    reason: str = typer.Option(..., "--reason", help="Why (shown in the ledger and the history)."),
) -> None:
    """Disable OPERATIONS (or --all) and roll back their rollouts. Every rollout is attempted;
    any that could not be rolled back is named on an ``error:`` line and the exit status is 1."""
    if bool(operations) == all_:
        fail("name operations or pass --all (not both)")
    with _service() as svc:
        why = operator_text("--reason", reason, required=True, max_length=REASON_MAX_CHARS)
        report = svc.rollback_operations(None if all_ else operations, why, _actor())
    out.print(f"disabled: {', '.join(report.disabled) or 'none (variant rollouts rolled back, operations stay on)'}")
    if report.failed:
        for f in report.failed:
            what = f"rollout {f.rollout_id}" if f.rollout_id is not None else "operation"
            error(f"{what} ({', '.join(f.operations)}) was not rolled back: {f.detail}")
        fail(f"{len(report.failed)} could not be rolled back; run the command again", 1)


def _only_active(svc: RolloutService) -> int:
    active = svc.list_rollouts(ACTIVE)
    if len(active) != 1:
        fail(f"{len(active)} rollouts in progress; name one with --id")
    return active[0].id


def _shadow_line(j: dict[str, Any]) -> str:
    """One line of a rollout's shadow calls (:meth:`ShadowReport.to_json`)."""
    pct = "-" if j["agreement_pct"] is None else f"{j['agreement_pct']} %"
    ratio = "-" if j["cost_ratio"] is None else f"{j['cost_ratio']}x"
    now = "shadowing" if j["active"] else "shadowed"
    return (f"{now} {j['percent']} % of live calls: {j['calls']} shadow calls, agreement {pct} "
            f"({j['agreed']} agreed, {j['errors']} failed), {j['refused_budget']} refused by the "
            f"shadow budget, cost shadow/live {ratio}")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


variants_app = typer.Typer(help="Variants (route + prompt version) of each operation.", no_args_is_help=True)


def _book() -> VariantBook:
    """The configured variants, checked as start-up checks them (exit 2 listing the problems)."""
    from opsgate.clock import SystemClock
    from opsgate.config import Settings
    from opsgate.metering.prices import PriceBook

    settings, now = Settings(), SystemClock().now
    prices = PriceBook.from_settings(settings, now)
    try:
        return checked_variants(settings, checked_routes(settings, prices, now()), prices, now())
    except RouteConfigError as exc:
        fail("; ".join(exc.problems))


@variants_app.command("list")
def variants_list() -> None:
    """Each operation's live variant and candidate (with its share of users), with the live
    variant's route and prompt version."""
    book = _book()
    with _service() as svc:
        assigned = {op: svc.assignment(op) for op in OPERATION_IDS}
    table = Table(title="variants")
    for name in ("operation", "live", "candidate", "route", "prompt", "sha256", "variants"):
        table.add_column(name)
    for op, a in assigned.items():
        live = book.serving(op, a.live)
        candidate = f"{a.candidate} ({a.candidate_percentage} %)" if a.candidate else "-"
        table.add_row(op, live.name, candidate, " > ".join(live.targets()), live.prompt.version,
                      live.prompt.sha256[:12], str(len(book.of(op))))
    out.print(table)


@variants_app.command("show")
def variants_show(operation: str = typer.Argument(..., help="Operation id, e.g. email-classify.")) -> None:
    """Every variant of OPERATION: its route, prompt version id, digest and source, and its role."""
    book = _book()
    _known_operation(operation)
    with _service() as svc:
        a = svc.assignment(operation)
    roles = {a.live: "live", **({a.candidate: f"candidate {a.candidate_percentage} %"} if a.candidate else {})}
    table = Table(title=f"variants of {operation}")
    for name in ("variant", "role", "route", "prompt", "sha256", "source"):
        table.add_column(name)
    for v in book.of(operation):
        role = roles.get(v.name, "-")
        table.add_row(v.name, role, " > ".join(v.targets()), v.prompt.version, v.prompt.sha256,
                      v.prompt.source)
    out.print(table)


def _known_operation(operation: str) -> None:
    """Exit 2 with ``error: unknown operation '<operation>' (known: ...)`` unless ``operation`` is
    one of the nine operation ids."""
    if operation not in OPERATION_IDS:
        fail(f"unknown operation {operation!r} (known: {', '.join(OPERATION_IDS)})")
