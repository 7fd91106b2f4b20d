"""Versioned prompts: the package's v1 of every operation, an operator's directory, the checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from opsgate.operations import OPERATIONS, prompt_catalogue
from opsgate.operations.common import DATA_RULE
from opsgate.operations.io import input_from_file
from opsgate.operations.prompts import PACKAGE_DIR, PromptConfigError, default_version, package_prompt
from tests.paths import EXAMPLES


def _prepare(op_id: str, prompt=None):  # type: ignore[no-untyped-def]
    op = OPERATIONS[op_id]
    body = input_from_file(op_id, next(EXAMPLES.glob(f"{op_id}.*")))
    return op.prepare(op.Input.model_validate(body), prompt)


def _write(root: Path, op_id: str, version: str, text: str) -> None:
    (root / op_id).mkdir(parents=True, exist_ok=True)
    (root / op_id / f"{version}.txt").write_text(text, encoding="utf-8")


def test_every_operation_ships_v1_identified_by_the_digest_of_its_file() -> None:
    catalogue = prompt_catalogue()
    for op_id in OPERATIONS:
        v1 = catalogue.get(op_id, "v1")
        raw = (PACKAGE_DIR / op_id / "v1.txt").read_bytes()
        assert v1.sha256 == hashlib.sha256(raw).hexdigest()
        assert v1.ledger_ref() == {"version": "v1", "sha256": v1.sha256}
        assert v1.source == "package" and catalogue.of(op_id) == sorted({"v1", default_version(op_id)})


# SHA-256 of each shipped version's file, pinned: a shipped text never changes (one id, one text),
# so a new text needs a new id (and DEFAULT_VERSIONS to make it the default).
SHIPPED = {
    ("analytics-anomaly", "v1"): "befb48f2ee6cb79266d29e33f3527aaa77130b0e979b0214d1388f37e96a9ad2",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("analytics-summary", "v1"): "23a38a6726bb8bae60c665814b37ab638ea9b2808ad5c4cc400161aa76796031",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("calendar-prep", "v1"): "a60481860af7484a01245878609411f9f0c7e400bae13b890a4ed70e488b0b88",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("calendar-time", "v1"): "8535bb724eef6bd5c639e2c765bff4f730e25a7d2606d9e83c1b2df96490ff89",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("email-classify", "v1"): "c4af023eabae077209a10f46513e425d9536393d49c07b16a65d5c5c503aa369",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("email-compose", "v1.1"): "6dc700f4d2f5dfd09acde9839b7d1aceb485f1db35a8e041d069ece61cb7213b",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("email-compose", "v1"): "7867ca67e91845dcc59c4b06b519752f0ce68ee950042922095a9cb32af21267",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("email-respond", "v1.1"): "ea7392f0b8aba8e27987ea034ba21e5156a5a5588ace11c8b3f200e59f0c03c7",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("email-respond", "v1"): "52a227e8498da0c5944448d43e8e2f4fe66896c3bf53499acded64d2e530e8f6",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("task-breakdown", "v1"): "9388c38be8eba1a30e4f202cfb63d09b7ea252d022e36a20e4694227d70ff583",  # pragma: allowlist secret (a prompt file's SHA-256)
    ("task-prioritize", "v1"): "4797de6a4ee14433a42b927ee1495ed1af9d8bff8c3e1449f66d4a6793b19c47",  # pragma: allowlist secret (a prompt file's SHA-256)
}


def test_every_shipped_prompt_keeps_its_text_and_the_drafts_default_to_the_version_stating_their_length() -> None:
    catalogue = prompt_catalogue()
    assert {(op, v): catalogue.get(op, v).sha256 for op in OPERATIONS for v in catalogue.of(op)} == SHIPPED
    for op_id in ("email-compose", "email-respond"):
        assert default_version(op_id) == "v1.1"
        assert "${max_words}" in catalogue.get(op_id, "v1.1").template
        assert package_prompt(op_id).version == "v1.1"
    assert default_version("email-classify") == "v1"


def test_the_default_prompt_is_v1_rendered_with_the_operations_fields_and_the_data_rule() -> None:
    system = _prepare("email-classify").request.system
    assert system.startswith("You classify one email for its recipient. Choose exactly one category:\n"
                             "- personal: written by a person")
    assert system.endswith("\n\n" + DATA_RULE)
    assert "${" not in system
    breakdown = _prepare("task-breakdown").request.system
    assert breakdown.startswith("You break the task in the task block into 2 to 8 concrete,")
    assert _prepare("email-classify", package_prompt("email-classify")).request == _prepare("email-classify").request


def test_an_operator_version_is_rendered_and_keeps_the_data_rule(tmp_path: Path) -> None:
    _write(tmp_path, "email-respond", "v2-short", "Reply briefly in a ${tone} tone. Costs $$0.\n")
    catalogue = prompt_catalogue(tmp_path)
    v2 = catalogue.get("email-respond", "v2-short")
    assert v2.source == str(tmp_path) and catalogue.of("email-respond") == ["v1", "v1.1", "v2-short"]
    request = _prepare("email-respond", v2).request
    assert request.system == "Reply briefly in a neutral tone. Costs $0.\n\n" + DATA_RULE
    assert request.user == _prepare("email-respond").request.user  # only the prompt changed


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ([("email-classify", "v2", "Sort ${mood} mail")],
         "prompt email-classify/v2: unknown placeholder(s) mood (offered: labels)"),
        ([("email-classify", "v1", "Sort mail")],
         "prompt email-classify/v1.txt: version 'v1' is shipped in the package; choose another id"),
        ([("email-classify", "V 2", "Sort mail")],
         "prompt email-classify/V 2.txt: the version id must match ^[a-z0-9][a-z0-9._-]{0,31}$"),
        ([("email-delete", "v2", "x")],
         "prompts_dir: 'email-delete' is no operation (analytics-anomaly, analytics-summary, "
         "calendar-prep, calendar-time, email-classify, email-compose, email-respond, task-breakdown, "
         "task-prioritize)"),
        ([("task-breakdown", "v2", "Costs 5$ each")],
         "prompt task-breakdown/v2: a '$' that starts no ${name} placeholder (write $$ for a literal $)"),
        ([("task-breakdown", "v2", " \n")], "prompt task-breakdown/v2: empty"),
    ],
    ids=["unknown-placeholder", "reused-id", "bad-id", "unknown-operation", "stray-dollar", "empty"],
)
def test_a_bad_operator_prompt_refuses_with_one_line_naming_it(tmp_path: Path, files, problem) -> None:
    for op_id, version, text in files:
        _write(tmp_path, op_id, version, text)
    with pytest.raises(PromptConfigError) as caught:
        prompt_catalogue(tmp_path)
    assert caught.value.problems == [problem]


def test_a_missing_operator_directory_and_a_non_utf8_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PromptConfigError) as caught:
        prompt_catalogue(tmp_path / "absent")
    assert caught.value.problems == [f"prompts_dir {str(tmp_path / 'absent')!r} is not a directory"]
    (tmp_path / "calendar-time").mkdir()
    (tmp_path / "calendar-time" / "v2.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(PromptConfigError) as caught:
        prompt_catalogue(tmp_path)
    assert caught.value.problems == ["prompt calendar-time/v2.txt: not UTF-8 text"]
