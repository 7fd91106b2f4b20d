"""pg_dump / pg_restore see neither the database password on their command line nor the gateway's
secrets in their environment: fake tools on PATH record the argv, environment and password file
they were given (issue 14 item 4)."""

from __future__ import annotations

import json
import secrets
import stat
import sys
from pathlib import Path

import pytest

from opsgate.security.backup import MAGIC, create, restore
from opsgate.testing import gateway_settings

FAKE = """#!{python}
import json, os, sys
args = sys.argv[1:]
passfile = os.environ.get("PGPASSFILE")
record = {{"argv": sys.argv, "env": dict(os.environ),
           "passfile": open(passfile).read() if passfile else None,
           "passfile_mode": oct(os.stat(passfile).st_mode & 0o777) if passfile else None}}
with open({out!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
for a in args:
    if a.startswith("--file="):
        open(a[len("--file="):], "wb").write(b"PGDMP fake custom-format dump")
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``pg_dump`` and ``pg_restore`` on PATH that append what they saw to the returned file."""
    record = tmp_path / "children.jsonl"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        script = bindir / tool
        script.write_text(FAKE.format(python=sys.executable, out=str(record)))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return record


def test_pg_tools_get_the_password_in_a_passfile_and_no_gateway_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_tools: Path
) -> None:
    password = "pw:" + secrets.token_urlsafe(18) + "\\x"  # a ':' and a '\\' to escape  # pragma: allowlist secret
    provider_key = "sk-ant-api03-" + secrets.token_urlsafe(40)
    monkeypatch.setenv("ANTHROPIC_API_KEY", provider_key)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-" + secrets.token_hex(16))
    monkeypatch.setenv("PGPASSWORD", "an-inherited-password")
    monkeypatch.setenv("PGSSLMODE", "prefer")
    url = f"postgresql+psycopg://opsgate:{password}@db.internal:5433/prod?application_name=x"
    settings = gateway_settings(tmp_path, database_url=url)
    monkeypatch.setenv("OPSGATE_MASTER_KEY", settings.master_key.get_secret_value())

    out = tmp_path / "pg.ogb"
    create(settings, out)
    assert out.read_bytes().startswith(MAGIC + b"P")
    restore(settings, out, url)

    dump, load = (json.loads(line) for line in fake_tools.read_text().splitlines())
    assert Path(dump["argv"][0]).name == "pg_dump" and Path(load["argv"][0]).name == "pg_restore"
    for child in (dump, load):
        argv = " ".join(child["argv"])
        assert password not in argv and "pw%3A" not in argv and password[3:-2] not in argv
        assert "--dbname=postgresql://opsgate@db.internal:5433/prod?application_name=x" in child["argv"]
        assert child["passfile"] == "*:*:*:*:" + password.replace("\\", "\\\\").replace(":", "\\:") + "\n"
        assert child["passfile_mode"] == "0o600"
        env = child["env"]
        assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ",
                            "PGPASSFILE", "PGSSLMODE"}
        assert env["PGSSLMODE"] == "prefer" and "PGPASSWORD" not in env
        values = "\n".join(env.values())
        assert provider_key not in values and settings.master_key.get_secret_value() not in values
    assert not Path(dump["env"]["PGPASSFILE"]).exists()  # removed with the temporary directory


def test_a_url_without_password_writes_no_passfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_tools: Path
) -> None:
    monkeypatch.setenv("OPSGATE_MASTER_KEY", "unused-here")
    settings = gateway_settings(tmp_path, database_url="postgresql://postgres@127.0.0.1:5432/test")
    create(settings, tmp_path / "pg.ogb")
    (dump,) = (json.loads(line) for line in fake_tools.read_text().splitlines())
    assert dump["passfile"] is None and "PGPASSFILE" not in dump["env"]
    assert "--dbname=postgresql://postgres@127.0.0.1:5432/test" in dump["argv"]
