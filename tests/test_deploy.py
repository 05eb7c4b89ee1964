"""deploy/: the alerting rules are valid, fire as meant, and name real metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import fakeredis
import pytest
import yaml

from stat_service import create_app

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "alerts.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs it)")
        pytest.skip("promtool not installed (Debian: the prometheus package)")
    return path


@pytest.mark.parametrize(
    "args",
    [("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml")],
    ids=["check", "unit-tests"],
)
def test_promtool_accepts_the_alerting_rules(args):
    done = subprocess.run(
        [promtool(), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerting_rules_use_only_metrics_the_service_exports(settings):
    app = create_app(settings, redis_client=fakeredis.FakeRedis())
    exported = set(
        re.findall(r"^# TYPE (\w+) ", app.test_client().get("/metrics").text, re.M)
    )
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    used = {
        name for rule in rules for name in re.findall(r"\b(stat_\w+)", rule["expr"])
    }
    assert used, "no metric found in the rules"
    suffixes = ("_bucket", "_count", "_sum", "_total")
    unknown = {
        name
        for name in used
        if name not in exported
        and not any(name.endswith(s) and name[: -len(s)] in exported for s in suffixes)
    }
    assert not unknown, f"rules name metrics the service does not export: {unknown}"
