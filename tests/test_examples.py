"""Every script in examples/ runs to completion, as a user would run it.

Each script starts its own SMTP server on 127.0.0.1 and needs no other
network.  examples/test_swap_policy.py is a pytest file: it runs under
pytest in a subprocess, as a user would run it in their own project.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 120  # seconds; each script takes a few

# What each script prints when it did its job.
TELLING = {
    "on_exception.py": "given up at once: ",
    "send_one.py": "alice@example.com: delivered after 4 attempts",
    "bulk_send.py": "300 of 300 messages have a final state",
    "custom_rule.py": "with our rule   deferred (sending_quota)",
}

SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The checkout's source first, whether or not the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_every_script_has_a_telling_line() -> None:
    assert sorted(TELLING) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_runs(script: str) -> None:
    done = run(str(Path("examples") / script))
    assert done.returncode == 0, done.stdout + done.stderr
    assert TELLING[script] in done.stdout, done.stdout + done.stderr


def test_example_pytest_file_passes() -> None:
    done = run(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(Path("examples") / "test_swap_policy.py"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    assert "failed" not in done.stdout
