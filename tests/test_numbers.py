"""The one number grammar (opsgate.numbers): ASCII digits only, in the CLI and the API alike."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.numbers import DECIMAL_RULE, cli_float, cli_int, parse_decimal, parse_int

LENIENT_ELSEWHERE = ["1_000", "１０", "١٠", "۱۰", " 5", "5 ", "+5", "1e3", "NaN", "Infinity", "inf", "0x10",
                     "", "-", "5.", ".5", "5.0.0", "1" * 41]
"""Texts Python's int()/Decimal()/float() or pydantic's lax mode take (or that are not numbers)."""


@pytest.mark.parametrize("text", LENIENT_ELSEWHERE)
def test_only_ascii_decimal_text_is_a_number(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_decimal(text)
    assert str(caught.value) == f"must be {DECIMAL_RULE}"  # the rule, never the text
    with pytest.raises(ValueError):
        parse_int(text)


def test_plain_numbers_parse_exactly() -> None:
    assert [parse_int(t) for t in ("0", "007", "-3", "9" * 40)] == [0, 7, -3, int("9" * 40)]
    assert [parse_decimal(t) for t in ("0.010", "12.345678", "-1", "1000000000")] == [
        Decimal("0.010"), Decimal("12.345678"), Decimal(-1), Decimal(1000000000)]
    with pytest.raises(ValueError):
        parse_int("1.5")


def test_cli_parsers_check_bounds_and_pass_defaults() -> None:
    assert cli_int(1, 100)("100") == 100 and cli_int(1, 100)(5) == 5 and cli_float(0)("2.5") == 2.5
    for parse, text in ((cli_int(1, 100), "101"), (cli_int(1, 100), "0"), (cli_float(1), "0.5")):
        with pytest.raises(ValueError, match="must be from"):
            parse(text)


def test_no_cli_number_option_is_parsed_by_typers_lax_coercion() -> None:
    """Every ``int``/``float`` Typer option or argument names a parser of opsgate.numbers."""
    lax = []
    for path in Path("src/opsgate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    typed = ast.unparse(arg.annotation) if arg.annotation else ""
                    is_typer = (isinstance(default, ast.Call) and ast.unparse(default.func) in
                                ("typer.Option", "typer.Argument"))
                    if is_typer and typed.split(" |")[0] in ("int", "float") and not any(
                            k.arg == "parser" for k in default.keywords):
                        lax.append(f"{path}:{arg.lineno} {arg.arg}")
    assert lax == []


@pytest.mark.parametrize("args", [
    ["rollout", "start", "email-compose", "--variant", "v2", "--shadow", "1_0"],
    ["rollout", "start", "email-compose", "--variant", "v2", "--shadow", "١٠"],
    ["toggles", "set", "email-compose", "--percent", "5_0"],
    ["ledger", "prove", "１"],
    ["ledger", "recover", "--older-than", "nan"],
])
def test_cli_refuses_lenient_numbers_before_doing_anything(args: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "ASCII digits 0-9" in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "never.db").exists()


def test_api_path_and_query_numbers_follow_the_grammar(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from tests.gateways import gateway_settings, running_gateway

    from opsgate.clock import ManualClock
    from opsgate.security.auth import TokenService
    from opsgate.security.users import add_user

    settings = gateway_settings(tmp_path)
    admin = {"Authorization": f"Bearer {TokenService(settings, ManualClock(datetime.now(UTC))).issue('root', 'admin')}"}
    with running_gateway(settings) as gateway:
        add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # its admin token needs the row
        for window in ("3_600", "\uff13\uff16\uff10\uff10", " 3600"):
            answer = gateway.client.get("/v1/health", params={"window": window}, headers=admin)
            assert (answer.status_code, answer.json()["code"]) == (422, "invalid_input"), window
            assert window.strip() not in answer.text
        assert gateway.client.get("/v1/health", params={"window": "3600"}, headers=admin).status_code == 200
        advance = gateway.client.post("/v1/admin/rollouts/1_0/advance", headers=admin)
        assert (advance.status_code, advance.json()["code"]) == (422, "invalid_input")
