"""JSON bodies (opsgate.bodies, deps.json_body): one reader for the operations and the admin
API. A body is refused before the route acts (415 not JSON, 413 too large, 422 malformed, a
repeated key, an integer past 64 bits, a wrong type or an unknown key), and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from opsgate.app import create_app
from opsgate.errors import InvalidInput, UnsupportedMediaType
from opsgate.bodies import MAX_DEPTH, check_content_encoding, decode_form, decode_json, is_json
from opsgate.operations.io import input_from_file
from opsgate.store.models import ledger_entries

Gateway = Any  # tests/conftest.py's running-gateway fixture
OP = "task-prioritize"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASKS = orjson.loads(orjson.dumps(input_from_file(OP, min(EXAMPLES.glob(f"{OP}.*")), None)))


def _admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('root', 'admin')}"}


def _ledger_size(gateway: Gateway) -> int:
    with gateway.runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()


def _problem(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert (answer.status_code, answer.headers["content-type"]) == (status, "application/problem+json"), answer.text
    problem = answer.json()
    assert problem["code"] == code and problem["status"] == status
    return problem


@pytest.mark.parametrize("content_type", ["application/json", "application/problem+json",
                                          "Application/JSON; charset=UTF-8"])
def test_json_media_types(content_type: str) -> None:
    assert is_json(content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "text/json", "application/x-www-form-urlencoded",
                                          "multipart/form-data", "application/json; charset=utf-16",
                                          "application/jsonp"])
def test_other_media_types_are_415(content_type: str | None) -> None:
    assert not is_json(content_type)
    with pytest.raises(UnsupportedMediaType):
        decode_json(b"{}", content_type)


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}', b'{"x": {"a": 1, "a" : 2}}', b'[{"a": 1}, {"b": 1, "b": 1}]',
    b'{"n": 123456789012345678901234567890}', b'{"n": -9223372036854775809}', b'{"n": 9223372036854775808}',
    b'{"n": ' + b"9" * 5000 + b"}", b'{"n": NaN}', b'{"n": Infinity}', b'{"n": 1e400}', b'"\\ud800"',
    b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe",
])
def test_json_that_would_lose_or_bend_a_value_is_422(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_json(raw, "application/json")


def test_keys_inside_strings_and_64_bit_integers_pass() -> None:
    raw = b'{"note": "\\"a\\": 1, \\"a\\": 2", "n": 9223372036854775807, "m": -9223372036854775808, "s": "1234567890123456789012"}'
    assert decode_json(raw, "application/json") == orjson.loads(raw)


def _nested(depth: int, inner: bytes = b'"x\\":"') -> bytes:
    """``{"raw": [[...inner...]]}``: arrays ``depth - 1`` deep inside the object (``depth`` in all).
    The default ``inner`` holds the bytes of a key end, so the duplicate-key re-parse runs."""
    return b'{"raw": ' + b"[" * (depth - 1) + inner + b"]" * (depth - 1) + b"}"


def test_nesting_is_limited_before_any_recursive_parse() -> None:
    """Tester A's F2: orjson takes 1,024 levels, the standard library's re-parse raised
    RecursionError (a 500) from about 995; each depth past MAX_DEPTH is one 422 with the rule."""
    assert decode_json(_nested(MAX_DEPTH), "application/json")["raw"][0] is not None
    for depth in (MAX_DEPTH + 1, 995, 1000, 1024):
        with pytest.raises(InvalidInput, match=f"more than {MAX_DEPTH} levels deep"):
            decode_json(_nested(depth), "application/json")
    with pytest.raises(InvalidInput, match="levels deep"):
        decode_json(_nested(1000, b'{"a": 1, "a": 2}'), "application/json")


def test_nesting_past_orjsons_own_limit_gets_the_depth_message_too() -> None:
    """tester-wire F9: past 1,024 levels orjson refuses first ("depth limit exceeded"), which was
    answered "not valid JSON"; it is the same nesting rule. A body that is merely broken keeps the
    "not valid JSON" message."""
    for depth in (1025, 1026, 5000):
        with pytest.raises(InvalidInput, match=f"more than {MAX_DEPTH} levels deep"):
            decode_json(_nested(depth), "application/json")
    with pytest.raises(InvalidInput, match="more than 32 levels deep"):
        decode_json(b"[" * 5000 + b"]" * 5000, "application/json")
    for broken in (b'{"a": }', b"[" * 40, b'{"raw": [[[1]]'):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            decode_json(broken, "application/json")


@pytest.mark.parametrize("raw,loc", [
    (b'{"raw": "Subject: a\\u0000b"}', "raw"),
    (b'{"tasks": [{"title": "x"}, {"title": "\\u0000"}]}', "tasks.1.title"),
    (b'{"opt_in": {"a\\u0000b": true}}', "opt_in"),
    (b'["\\u0000"]', "0"),
])
def test_a_nul_in_any_string_or_key_is_422_naming_where(raw: bytes, loc: str) -> None:
    """tester-wire F9: a NUL was accepted (and echoed); PostgreSQL text refuses it (a 500 on some
    routes), SQLite stores it. Every body refuses it, naming the place, not the value."""
    with pytest.raises(InvalidInput, match="NUL character") as refused:
        decode_json(raw, "application/json")
    assert refused.value.errors[0]["loc"] == loc
    assert "\x00" not in refused.value.detail  # the value is never quoted


def test_the_text_of_an_escape_is_not_a_nul() -> None:
    """``"\\\\u0000"`` is a backslash and ``u0000``, six characters and no NUL: it passes."""
    assert decode_json(rb'{"raw": "C:\\u0000"}', "application/json") == {"raw": "C:\\u0000"}
    with pytest.raises(InvalidInput, match="NUL character"):
        decode_form(b"username=a%00b&password=x")
    assert decode_form(b"username=a%2500b") == {"username": "a%00b"}


@pytest.mark.parametrize("value,named", [("gzip", "gzip"), ("GZIP", "gzip"), ("br", "br"),
                                         ("identity, deflate", "deflate"), ("x-custom", "x-custom")])
def test_a_content_encoding_other_than_identity_is_415_naming_it(value: str, named: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"content encoding '{named}' is not supported") as refused:
        check_content_encoding(value)
    assert refused.value.response_headers == {"Accept-Encoding": "identity"}
    for fine in (None, "", "identity", "Identity"):
        check_content_encoding(fine)


def test_a_gzip_body_is_415_on_operations_admin_and_form_routes(gateway: Gateway) -> None:
    """tester-wire F9: a gzip body got 422 "not valid JSON" (nothing looked at Content-Encoding);
    RFC 9110 §15.5.16: 415, with Accept-Encoding saying what is accepted."""
    import gzip

    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    before = _ledger_size(gateway)
    answers = [
        gateway.client.post(f"/v1/operations/{OP}", content=gzip.compress(orjson.dumps(TASKS)),
                            headers={**gz, "Authorization": f"Bearer {gateway.token()}"}),
        gateway.client.put("/v1/admin/budgets", headers={**gz, **_admin(gateway)},
                           content=gzip.compress(b'{"period": "day", "limit_usd": "1.00"}')),
        gateway.client.post("/v1/auth/session", content=gzip.compress(b"username=ann&password=pw"),
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"}),
    ]
    for answer in answers:
        problem = _problem(answer, 415, "unsupported_media_type")
        assert "content encoding 'gzip' is not supported" in problem["detail"]
        assert answer.headers["accept-encoding"] == "identity"
    assert _ledger_size(gateway) == before
    identity = gateway.client.post(f"/v1/operations/{OP}", content=orjson.dumps(TASKS), headers={
        "Content-Encoding": "identity", "Content-Type": "application/json", "Authorization": f"Bearer {gateway.token()}"})
    assert identity.status_code == 200, identity.text


def test_deep_bodies_are_422_on_operations_and_admin_routes(gateway: Gateway) -> None:
    token = {"Authorization": f"Bearer {gateway.token()}", "Content-Type": "application/json"}
    admin = {**_admin(gateway), "Content-Type": "application/json"}
    before = _ledger_size(gateway)
    answers = [
        gateway.client.post("/v1/operations/email-classify", headers=token, content=_nested(1000)),
        gateway.client.put("/v1/admin/budgets", headers=admin, content=_nested(1000, b'{"a": 1, "a": 2}')),
    ]
    for answer in answers:
        assert "levels deep" in _problem(answer, 422, "invalid_input")["detail"]
    assert _ledger_size(gateway) == before


def test_an_operation_body_sent_as_text_plain_is_415_before_the_ledger(gateway: Gateway) -> None:
    before = _ledger_size(gateway)
    token = {"Authorization": f"Bearer {gateway.token()}"}
    for headers in ({"Content-Type": "text/plain"}, {}, {"Content-Type": "application/x-www-form-urlencoded"}):
        answer = gateway.client.post(f"/v1/operations/{OP}", content=orjson.dumps(TASKS), headers={**token, **headers})
        _problem(answer, 415, "unsupported_media_type")
    repeated = gateway.client.post(f"/v1/operations/{OP}", headers={**token, "Content-Type": "application/json"},
                                   content=b'{"tasks": [], ' + orjson.dumps(TASKS)[1:])
    assert _problem(repeated, 422, "invalid_input")["errors"] == [
        {"loc": "body", "msg": "The request body repeats a key within one object"}]
    huge = gateway.client.post(f"/v1/operations/{OP}", headers={**token, "Content-Type": "application/json"},
                               content=b'{"tasks": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    _problem(huge, 413, "content_too_large")
    assert _ledger_size(gateway) == before
    assert gateway.post(OP, TASKS).status_code == 200


def test_a_malformed_advance_body_is_refused_and_the_rollout_stays(gateway: Gateway) -> None:
    admin = _admin(gateway)
    started = gateway.client.post("/v1/admin/rollouts", headers=admin, json={"operations": [OP]})
    assert started.status_code == 201
    url = f"/v1/admin/rollouts/{started.json()['id']}/advance"
    refused = [
        (gateway.client.post(url, headers={**admin, "Content-Type": "application/json"}, content=b'{"force": '), 422),
        (gateway.client.post(url, headers={**admin, "Content-Type": "text/plain"}, content=b"go"), 415),
        (gateway.client.post(url, headers=admin, json={"force": True}), 422),
        (gateway.client.post(url, headers=admin, json=[]), 422),
        (gateway.client.post(url, headers={**admin, "Content-Type": "application/json"},
                             content=b"{" + b" " * 70_000 + b"}"), 413),
    ]
    assert [a.status_code for a, _ in refused] == [s for _, s in refused]
    [rollout] = gateway.client.get("/v1/admin/rollouts", headers=admin).json()["rollouts"]
    assert (rollout["percentage"], [h["action"] for h in rollout["history"]]) == (5, ["start"])
    assert gateway.client.post(url, headers=admin, json={}).json()["stage_index"] == 1
    assert gateway.client.post(url, headers=admin).json()["stage_index"] == 2


def test_admin_bodies_refuse_text_plain_wrong_types_and_unknown_keys(gateway: Gateway) -> None:
    admin = _admin(gateway)
    budget = {"period": "day", "limit_usd": "1"}
    before = _ledger_size(gateway)
    answers = [
        (gateway.client.put("/v1/admin/budgets", headers={**admin, "Content-Type": "text/plain"},
                            content=orjson.dumps(budget)), 415),
        (gateway.client.put("/v1/admin/budgets", headers=admin, json={**budget, "on_exhaustd": "cheaper"}), 422),
        (gateway.client.put("/v1/admin/budgets", headers=admin, json={**budget, "limit_usd": 1}), 422),
        (gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin, json={"enabled": "false"}), 422),
        (gateway.client.put(f"/v1/admin/toggles/{OP}", headers={**admin, "Content-Type": "application/json"},
                            content=b'{"enabled": true, "enabled": false}'), 422),
        (gateway.client.post("/v1/admin/rollouts", headers=admin, json={"operations": [OP], "shadow_percent": "5"}), 422),
        (gateway.client.post("/v1/admin/rollouts", headers=admin, json={"operations": [OP], "shadow_percent": 5.0}), 422),
        (gateway.client.put("/v1/admin/users/root", headers=admin, json={"role": "admin", "rol": "user"}), 422),
    ]
    assert [a.status_code for a, _ in answers] == [s for _, s in answers]
    for answer, _ in answers:
        assert "Traceback" not in answer.text and answer.headers["content-type"] == "application/problem+json"
    assert gateway.client.get("/v1/admin/budgets", headers=admin).json() == {"budgets": []}
    assert gateway.client.get("/v1/admin/rollouts", headers=admin).json() == {"rollouts": []}
    assert _ledger_size(gateway) == before


def test_every_changing_api_route_reads_its_body_before_it_acts() -> None:
    """A POST/PUT/PATCH/DELETE route of the API declares its body (json_body, form_body or
    NoBodyDep), so a malformed one is refused before the route acts; none ignores its body. (The
    operations read theirs in the pipeline's step 4, before the reservation and the ledger intent;
    session logout only ends the caller's own session.)"""
    silent = []
    for route in create_app().routes:
        if isinstance(route, APIRoute) and route.methods & {"POST", "PUT", "PATCH", "DELETE"} \
                and not route.path.startswith(("/dashboard", "/v1/operations/")):
            names = {d.call.__name__ for d in route.dependant.dependencies if d.call is not None}
            if not any(n.startswith(("json_", "form_")) for n in names) and route.path != "/v1/auth/session/logout":
                silent.append(f"{sorted(route.methods)} {route.path}")
    assert silent == []


def test_sign_in_forms_refuse_other_media_types_repeated_fields_and_huge_bodies(gateway: Gateway) -> None:
    from opsgate.security.users import add_user, set_password

    add_user(gateway.runtime.engine, gateway.runtime.clock, "ann")
    set_password(gateway.runtime.engine, "ann", "pw-for-ann-1")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    latin1 = {"Content-Type": "application/x-www-form-urlencoded; charset=latin1"}
    refusals = [  # (headers, body suffix or whole body, status of the session sign-in)
        ({"Content-Type": "text/plain"}, b"", 415, "unsupported_media_type"),
        (latin1, b"", 415, "unsupported_media_type"),
        (form, b"&username=root", 422, "invalid_input"),
        (form, b"username=%ff&password=x", 422, "invalid_input"),
        (form, b"&pad=" + b"x" * 20_000, 413, "content_too_large"),
    ]
    for url, good in (("/v1/auth/session", b"username=ann&password=pw-for-ann-1"),
                      ("/v1/auth/token", b"grant_type=password&username=ann&password=pw-for-ann-1")):
        for headers, extra, status, code in refusals:
            content = extra if extra.startswith(b"username=") else good + extra
            answer = gateway.client.post(url, content=content, headers=headers)
            if url == "/v1/auth/token":  # RFC 6749 §5.2: every refused token request is a 400
                assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), answer.text
            else:
                _problem(answer, status, code)
        assert gateway.client.post(url, content=good, headers=form).status_code == 200
    as_json = gateway.client.post("/v1/auth/session", json={"username": "ann", "password": "pw-for-ann-1"})
    _problem(as_json, 415, "unsupported_media_type")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gateway_on_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    """A running gateway on a migrated SQLite file or a fresh PostgreSQL database."""
    from tests.gateways import gateway_settings, running_gateway
    from tests.stores import migrated_url

    with migrated_url(request.param, tmp_path, "nul") as url:
        with running_gateway(gateway_settings(tmp_path, database_url=url)) as running:
            yield running


def _rows(gateway: Gateway) -> dict[str, int]:
    """Rows in every table of the store (each request here must write none)."""
    from opsgate.store.models import metadata

    with gateway.runtime.engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in metadata.tables.items()}


def test_a_nul_in_any_text_is_a_422_on_either_store_and_nothing_is_written(gateway_on_store: Gateway) -> None:
    """tester-wire F9: on PostgreSQL a NUL in a toggle's path, an opt-in key or a sign-in name was a
    500 (psycopg: "PostgreSQL text fields cannot contain NUL (0x00) bytes"; the opt-in one reset
    the connection), on SQLite it was stored or echoed. Now every one is refused alike on both
    stores, bodies by :mod:`opsgate.bodies` (naming the field), any other text before the store."""
    gw = gateway_on_store
    admin, user = _admin(gw), {"Authorization": f"Bearer {gw.token('alice')}"}
    nul = "a\u0000b"
    before = _rows(gw)
    answers = {
        "operation raw": gw.client.post("/v1/operations/email-classify", headers=user,
                                        json={"raw": f"Subject: {nul}\n\nhello"}),
        "budget user": gw.client.put("/v1/admin/budgets", headers=admin,
                                     json={"user_id": nul, "period": "day", "limit_usd": "1.00"}),
        "toggle reason": gw.client.put("/v1/admin/toggles/email-classify", headers=admin,
                                       json={"enabled": False, "reason": nul}),
        "toggle group": gw.client.put("/v1/admin/toggles/email-classify", headers=admin,
                                      json={"group_id": nul}),
        "opt-in key": gw.client.put("/v1/me/settings", headers=user, json={"opt_in": {nul: True}}),
        "rollout variant": gw.client.post("/v1/admin/rollouts", headers=admin,
                                          json={"operations": ["email-classify"], "variant": nul}),
        "toggle path": gw.client.put("/v1/admin/toggles/email%00classify", headers=admin, json={"enabled": False}),
        "session form": gw.client.post("/v1/auth/session", data={"username": nul, "password": "x" * 12}),
    }
    details = {name: _problem(answer, 422, "invalid_input")["detail"] for name, answer in answers.items()}
    assert details["operation raw"] == "raw must not contain a NUL character (U+0000)"
    assert details["opt-in key"] == "A key of opt_in must not contain a NUL character (U+0000)"
    assert details["toggle path"] == "A text value must not contain a NUL character (U+0000), which the database cannot store"
    assert details["session form"] == "A field of the form body must not contain a NUL character (U+0000)"
    token = gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": nul, "password": "x" * 12})
    assert (token.status_code, token.json()["error"]) == (400, "invalid_request"), token.text  # RFC 6749 §5.2
    assert _rows(gw) == before
    assert gw.client.get("/v1/admin/toggles/email-classify", headers=admin).json()["enabled"] is True


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_store_refuses_a_nul_in_any_text_parameter_and_rolls_back(store: str, tmp_path: Path) -> None:
    """The rule under every path (opsgate.store.db): a NUL in a text parameter, one row or many,
    is InvalidInput before the statement runs, and the transaction is rolled back."""
    from sqlalchemy import text

    from opsgate.store.db import make_engine
    from tests.stores import fresh_postgres

    with (fresh_postgres("nulstore") if store == "postgres" else nullcontext(f"sqlite:///{tmp_path / 'n.db'}")) as url:
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (t TEXT)"))
        for rows in ({"t": "a\x00b"}, [{"t": "fine"}, {"t": "\x00"}]):
            with pytest.raises(InvalidInput, match="NUL character"), engine.begin() as conn:
                conn.execute(text("INSERT INTO probe VALUES ('first')"))
                conn.execute(text("INSERT INTO probe VALUES (:t)"), rows)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO probe VALUES (:t)"), {"t": "a\\u0000b"})  # the escape's text is fine
            assert conn.execute(text("SELECT t FROM probe")).scalars().all() == ["a\\u0000b"]
        engine.dispose()
