"""The operator's side (deploy/): the alert rules pass their promtool unit tests, every
alert has a firing and a quiet case, and every PromQL expression of the rules and of the
Grafana dashboard parses and names only series the code exports (src/metrics.py).

``promtool`` comes with Debian's ``prometheus`` package (``.ci/setup-system``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from src import metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pandadoc-resilience.json"

# Grafana's own variables, as Prometheus would receive them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run .ci/setup-system (Debian's prometheus)")
    return binary


def exported_series() -> set[str]:
    """Every series name src/metrics.py exports, as Prometheus stores them."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            base = family.name
            if family.type == "counter":
                names |= {f"{base}_total", f"{base}_created"}
            elif family.type == "histogram":
                names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
            else:
                names.add(base)
    return names


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    aggregations, keywords, label names, durations or recording-rule names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS or ":" in word:
            continue  # a function or aggregation, a keyword, a recording rule
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def test_the_rule_unit_tests_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert len(alerts) >= 8
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen quiet"


def test_the_rules_name_only_exported_series() -> None:
    exported = exported_series()
    for rule in rules():
        assert series_names(rule["expr"]) <= exported, rule.get("alert") or rule.get("record")


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    used = set().union(*(series_names(e) for e in dashboard_expressions()))
    for name in (
        "pandadoc_circuits_open",
        "pandadoc_service_fallbacks_total",
        "pandadoc_tool_duration_seconds_bucket",
        "pandadoc_call_fillers_total",
        "pandadoc_call_longest_silence_seconds_bucket",
        "pandadoc_outbox_depth",
        "pandadoc_outbox_dead_letters_waiting",
        "pandadoc_store_errors_total",
        "pandadoc_caller_identities_total",
        "pandadoc_identity_refusals_total",
    ):
        assert name in used, name


def test_every_dashboard_expression_parses_and_names_exported_series(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 12
    exported = exported_series()
    for expr in exprs:
        unknown = series_names(expr) - exported
        assert not unknown, f"{expr}: {sorted(unknown)} not exported by src/metrics.py"
    # promtool parses each expression as a recording rule's.
    recorded = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    generated = {"groups": [{"name": "dashboard", "rules": recorded}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(generated))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_the_checks_catch_a_bad_expression(tmp_path: Path) -> None:
    """The checks above can fail: an unknown series and a syntax error are caught."""
    assert series_names('sum by (service) (rate(pandadoc_nope_total{a="b"}[5m]))') == {
        "pandadoc_nope_total"
    }
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(("}]}]})
    )
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True)
    assert done.returncode != 0
