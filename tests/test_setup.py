"""The README's test command is the one CI runs, and it sets up what the tests need: a fresh
machine without Chromium or PostgreSQL passes it (the browser and PostgreSQL tests then
run, never skip)."""

from __future__ import annotations

import os
import re

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "test"


def readme_test_command() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("Set up and run the tests:", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_readme_and_ci_run_the_same_script() -> None:
    assert readme_test_command().split()[-1] == "scripts/test"
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].strip().startswith("exec scripts/test")
    assert not any(re.search(r"\b(apt-get|pip)\b", line) for line in commands), "CI must install nothing of its own"
    assert os.access(SCRIPT, os.X_OK)


def test_the_script_installs_the_browser_and_a_postgresql_server() -> None:
    script = SCRIPT.read_text()
    assert re.search(r"\[ -x /usr/bin/chromium \] \|\| need\+=\(chromium\)", script)
    assert "apt-get install" in script
    assert "tests/pgcluster.py start" in script and "trap" in script
    extras = [line for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("test =")]
    assert '"pgserver' in extras[0], "the PostgreSQL binaries come with the test extra"
    assert "pytest" in script and "-eq 5" in script  # no tests collected is a failure

