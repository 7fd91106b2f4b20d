"""deploy/: promtool checks and unit-tests the shipped alert rules, a real Prometheus (Debian's
``prometheus`` package) scrapes a real ``opsgate serve`` with the token file and answers the series
back over its HTTP API, and the Grafana dashboard has /dashboard's overview panels over metric
names the gateway really exposes."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.gateways import Gateway, free_port
from tests.paths import EXAMPLES, REPO

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.security import metrics_token
from opsgate.security.auth import TokenService

DEPLOY = REPO / "deploy"
RULES, RULES_TEST = DEPLOY / "prometheus" / "rules.yml", DEPLOY / "prometheus" / "rules_test.yml"
OVERVIEW = REPO / "src" / "opsgate" / "web" / "templates" / "overview.html"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `./dev test` installs Debian's prometheus package"
    return path


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_prometheus_rules_pass_promtool_check() -> None:
    run = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in run.stdout


def test_prometheus_rules_unit_tests_pass_for_every_rule() -> None:
    run = subprocess.run([_tool("promtool"), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
    cases = [case for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    assert fired == {a["alert"] for a in _alerts()}
    assert {a["labels"]["severity"] for a in _alerts()} == {"P1", "P2", "P3"}


def test_prometheus_rules_catch_a_threshold_moved_past_its_edge(tmp_path: Path) -> None:
    """The unit tests pin the edges: a rule whose threshold moves by one step fails them."""
    for original, moved in [("> 0.05\n", ">= 0.05\n"), ("> 1800", ">= 1800"), (") > 5\n", ") >= 5\n"),
                            (">= 20\n", ">= 19\n")]:
        text = RULES.read_text()
        assert original in text
        (tmp_path / "rules.yml").write_text(text.replace(original, moved))
        shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
        run = subprocess.run([_tool("promtool"), "test", "rules", "rules_test.yml"], cwd=tmp_path,
                             capture_output=True, text=True)
        assert run.returncode == 1 and "FAILED" in run.stdout + run.stderr, moved


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except (httpx.HTTPError, ValueError, KeyError, IndexError):  # ValueError: JSON not ready yet
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _process(args: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen]:
    """Run ``args`` with output in ``log``; terminate (then kill) it on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Settings]]:
    """A real ``opsgate serve --sandbox`` (its own SQLite file) with a scrape token file."""
    token_file = tmp_path / "metrics-token"
    metrics_token.create(token_file)
    port = free_port()
    env = {**os.environ, "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'opsgate.db'}",
           "OPSGATE_JWT_SECRET": secrets.token_urlsafe(48), "OPSGATE_MASTER_KEY": secrets.token_urlsafe(32) + "=",
           "OPSGATE_METRICS_TOKEN_FILE": str(token_file), "OPSGATE_PROVIDER_STATUS_INTERVAL_S": "1"}
    url = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-m", "opsgate.cli", "serve", "--sandbox", "--port", str(port)],
                  tmp_path / "serve.log", env=env, cwd=tmp_path):
        yield url, token_file, Settings(jwt_secret=env["OPSGATE_JWT_SECRET"])


def _prometheus_config(tmp_path: Path, target: str, token_file: Path) -> Path:
    """deploy/prometheus/prometheus.yml pointed at ``target`` and ``token_file``, scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    job = config["scrape_configs"][0]
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [target]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_real_prometheus_scrapes_opsgate_serve_with_the_token_file(
    served: tuple[str, Path, Settings], tmp_path: Path
) -> None:
    url, token_file, settings = served
    _wait("opsgate serve", lambda: httpx.get(f"{url}/readyz").status_code == 200)
    user = TokenService(settings, SystemClock()).issue("alice", "user")
    raw = (EXAMPLES / "email-classify.eml").read_text()
    answer = httpx.post(f"{url}/v1/operations/email-classify", json={"raw": raw},
                        headers={"Authorization": f"Bearer {user}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    config = _prometheus_config(tmp_path, url.removeprefix("http://"), token_file)
    check = subprocess.run([_tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    prom = f"http://127.0.0.1:{free_port()}"
    args = [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={prom.removeprefix('http://')}"]
    with _process(args, tmp_path / "prometheus.log"):
        def query(expr: str) -> list[dict[str, Any]]:
            body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}).json()
            assert body["status"] == "success"
            return body["data"]["result"]

        target = _wait("a healthy scrape", lambda: [t for t in httpx.get(f"{prom}/api/v1/targets").json()
                                                   ["data"]["activeTargets"] if t["health"] == "up"])
        assert target[0]["labels"]["job"] == "opsgate"
        served_ok = _wait("the request counter", lambda: query(
            'opsgate_requests_total{job="opsgate",operation="email-classify",status="ok"}'))
        assert served_ok[0]["metric"]["provider"] == answer.json()["provider"]
        assert served_ok[0]["metric"]["model"] == answer.json()["model"]
        assert float(served_ok[0]["value"][1]) == 1.0
        cost = query('sum(opsgate_cost_micro_usd_total{operation="email-classify"})')
        assert float(cost[0]["value"][1]) == answer.json()["cost_micro_usd"]
        available = query("opsgate_provider_available")
        assert {s["metric"]["provider"] for s in available} == {"anthropic", "deepseek", "gemini"}
        rules = _wait("the rules", lambda: httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"])
        assert {r["name"] for r in rules[0]["rules"]} == {a["alert"] for a in _alerts()}
        assert all(r["health"] == "ok" for r in rules[0]["rules"])
        assert query('ALERTS{alertname=~"Opsgate.*"}') == []
    log = (tmp_path / "prometheus.log").read_text()
    assert token_file.read_text().strip() not in log


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "expr" in node:
            yield node["expr"]
        for value in node.values():
            yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def test_grafana_dashboard_has_the_overview_panels_over_exposed_metrics(gateway: Gateway) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "opsgate.json").read_text())
    overview = re.findall(r"<h2>([^<]+)</h2>", OVERVIEW.read_text())
    assert [p["title"] for p in dashboard["panels"]] == [t.replace("&amp;", "&") for t in overview]
    assert gateway.post("email-classify", {"raw": (EXAMPLES / "email-classify.eml").read_text()}).status_code == 200
    exposed = gateway.client.get("/metrics", headers={"Authorization": f"Bearer {gateway.token('ops', 'operator')}"})
    names = set(re.findall(r"^(?:# TYPE )?([a-z_]+)[{ ]", exposed.text, re.MULTILINE))
    used = {m for expr in _expressions(dashboard["panels"]) for m in re.findall(r"\bopsgate_[a-z_]+", expr)}
    used |= {m for a in _alerts() for m in re.findall(r"\bopsgate_[a-z_]+", a["expr"])}
    assert used - names <= {"opsgate_ledger_hash_chain_intact"}  # exposed once a verification ran
    assert len(used) >= 10
