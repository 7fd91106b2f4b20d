"""Variants: route + prompt version per operation, from opsgate.toml; the CLI; the ledger's view."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from opsgate.cli import app as cli_app
from opsgate.config import Settings, VariantConfig
from opsgate.metering.prices import PriceBook
from opsgate.operations import prompt_catalogue
from opsgate.rollout.errors import VariantNotFound
from opsgate.rollout.variants import DEFAULT_VARIANT, VariantConfigError, build_book, checked_variants
from opsgate.routing.policy import Target, policies_for
from opsgate.store.models import ai_operation_log
from opsgate.testing import GovernedGateway
from tests.paths import EXAMPLES

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
runner = CliRunner()


def _settings(tmp_path: Path, variants: dict[str, dict[str, VariantConfig]], **extra: object) -> Settings:
    return Settings(config=tmp_path / "absent.toml", variants=variants, **extra)  # type: ignore[arg-type]


def _prompts(tmp_path: Path) -> Path:
    (tmp_path / "prompts" / "email-classify").mkdir(parents=True)
    (tmp_path / "prompts" / "email-classify" / "v2.txt").write_text("Sort the mail into:\n${labels}\n")
    return tmp_path / "prompts"


def test_without_configuration_every_operation_has_only_the_default_variant(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {})
    policies = policies_for(settings)
    book = build_book(settings, policies, prompt_catalogue())
    for op, policy in policies.items():
        assert [v.name for v in book.of(op)] == [DEFAULT_VARIANT]
        default = book.get(op, DEFAULT_VARIANT)
        assert default.policy == policy and default.prompt.version == ("v1.1" if op in ("email-compose", "email-respond") else "v1")


def test_a_configured_variant_is_a_chain_plus_a_prompt_version_over_the_route(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"email-classify": {
        "flash-v2": VariantConfig(chain=("gemini/gemini-3.8-flash",), prompt="v2"),
        "same-route-v2": VariantConfig(prompt="v2"),
    }}, prompts_dir=_prompts(tmp_path))
    policies = policies_for(settings)
    book = checked_variants(settings, policies, PriceBook.from_settings(settings, lambda: NOW), NOW)
    flash = book.get("email-classify", "flash-v2")
    assert flash.policy.chain == (Target("gemini", "gemini-3.8-flash"),)
    assert flash.policy.timeout_s == policies["email-classify"].timeout_s
    assert flash.ledger_ref() == {"variant": "flash-v2",
                                  "prompt": {"version": "v2", "sha256": flash.prompt.sha256}}
    assert book.get("email-classify", "same-route-v2").policy == policies["email-classify"]
    assert [v.name for v in book.of("email-classify")] == ["default", "flash-v2", "same-route-v2"]
    assert "gemini/gemini-3.8-flash" in book.chains()
    with pytest.raises(VariantNotFound) as missing:
        book.get("email-classify", "nope")
    assert missing.value.status == 404
    assert missing.value.detail == ("email-classify has no variant 'nope'; its variants: "
                                    "default, flash-v2, same-route-v2")


def test_every_problem_of_the_variant_tables_is_listed_at_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {
        "email-delete": {"x": VariantConfig()},
        "email-classify": {"default": VariantConfig(prompt="v1"),
                           "local": VariantConfig(chain=("local/qwen3-8b",), prompt="v9")},
    })
    with pytest.raises(VariantConfigError) as caught:
        build_book(settings, policies_for(settings), prompt_catalogue())
    assert caught.value.problems[0].startswith("variants 'email-delete': no such operation (")
    assert caught.value.problems[1:] == [
        "variant email-classify/default: the name must match ^[a-z0-9][a-z0-9._-]{0,47}$ and not be "
        "'default' (the implicit variant)",
        "variant email-classify/local, target 'local/qwen3-8b': unknown provider 'local'",
        "variant email-classify/local: email-classify has no prompt version 'v9' (known: v1)",
    ]


def test_a_variant_target_without_a_price_refuses(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"task-breakdown": {"cheap": VariantConfig(chain=("deepseek/no-such-model",))}})
    with pytest.raises(VariantConfigError) as caught:
        checked_variants(settings, policies_for(settings), PriceBook.from_settings(settings, lambda: NOW), NOW)
    assert caught.value.problems == [
        "variant target 'deepseek/no-such-model': no price (add [prices.\"deepseek/no-such-model\"] with "
        "input and output in USD per million tokens)"]


def test_variants_cli_lists_shows_and_rolls_out_a_variant(tmp_path: Path, monkeypatch) -> None:
    prompts = _prompts(tmp_path)
    config = tmp_path / "opsgate.toml"
    config.write_text(f'prompts_dir = "{prompts}"\n\n[variants.email-classify.flash-v2]\n'
                      'chain = ["gemini/gemini-3.8-flash"]\nprompt = "v2"\n')
    monkeypatch.setenv("OPSGATE_CONFIG", str(config))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    shown = runner.invoke(cli_app, ["variants", "show", "email-classify"], env={"COLUMNS": "240"})
    assert shown.exit_code == 0, shown.output
    v2 = prompt_catalogue(prompts).get("email-classify", "v2")
    row = next(line for line in shown.output.splitlines() if "flash-v2" in line)
    assert [c.strip() for c in row.split("│")[1:6]] == ["flash-v2", "-", "gemini/gemini-3.8-flash", "v2", v2.sha256]

    started = runner.invoke(cli_app, ["rollout", "start", "email-classify", "--variant", "flash-v2"])
    assert started.exit_code == 0, started.output
    assert started.output.strip() == "rollout 1 started: variant flash-v2 of email-classify at 5 %"
    assert _row(cli_app, "email-classify")[:3] == ["email-classify", "default", "flash-v2 (5 %)"]
    assert _row(cli_app, "email-classify")[-1] == "2"
    shown = runner.invoke(cli_app, ["variants", "show", "email-classify"], env={"COLUMNS": "240"})
    row = next(line for line in shown.output.splitlines() if "flash-v2" in line)
    assert [c.strip() for c in row.split("│")[1:3]] == ["flash-v2", "candidate 5 %"]
    rolled = runner.invoke(cli_app, ["rollout", "rollback", "email-classify", "--reason", "answers look off"])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.output.strip() == "disabled: none (variant rollouts rolled back, operations stay on)"
    assert _row(cli_app, "email-classify")[:3] == ["email-classify", "default", "-"]

    config.write_text('[variants.email-classify.x]\nprompt = "v7"\n')
    refused = runner.invoke(cli_app, ["variants", "list"], env={"COLUMNS": "240"})
    assert refused.exit_code == 2
    assert " ".join(refused.output.split()) == (
        "error: variant email-classify/x: email-classify has no prompt version 'v7' (known: v1)")


def _row(app, operation: str) -> list[str]:  # type: ignore[no-untyped-def]
    listed = runner.invoke(app, ["variants", "list"], env={"COLUMNS": "240"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if operation in line)
    return [c.strip() for c in row.split("│")[1:-1]]


async def test_the_intent_names_the_variant_and_its_prompt_digest_never_the_text(
    governed: GovernedGateway, tmp_path: Path
) -> None:
    call = governed.call("email-classify", CLASSIFY)
    await governed.gateway.govern(call)
    intent = dict(governed.entries(call.request_id))["intent"]
    default = governed.gateway.variants.get("email-classify", DEFAULT_VARIANT)
    assert intent["variant"] == "default"
    assert intent["prompt"] == {"version": "v1", "sha256": default.prompt.sha256}
    assert "You classify one email" not in str(governed.entries())
    assert governed.provider.requests[-1].system.startswith("You classify one email")
    with governed.engine.connect() as conn:
        row = conn.execute(select(ai_operation_log.c.variant, ai_operation_log.c.repaired)
                           .where(ai_operation_log.c.request_id == call.request_id)).one()
    assert tuple(row) == ("default", False)


async def test_a_call_whose_answer_needed_the_repair_request_is_logged_repaired(governed: GovernedGateway) -> None:
    governed.provider.script.append({"category": "not-a-category"})  # schema miss, then a valid answer
    call = governed.call("email-classify", CLASSIFY)
    await governed.gateway.govern(call)
    with governed.engine.connect() as conn:
        row = conn.execute(select(ai_operation_log.c.variant, ai_operation_log.c.repaired, ai_operation_log.c.status)
                           .where(ai_operation_log.c.request_id == call.request_id)).one()
    assert tuple(row) == ("default", True, "ok")
    assert len(governed.provider.requests) == 2
