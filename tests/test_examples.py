"""Every script in examples/ runs to completion, as a user would run it.

Each script starts its own SMTP server on 127.0.0.1 and needs no other
network.  Every script must exit 0; the ones listed in ``TELLING`` must also
print their telling line.  A script that needs an optional package which is
not installed (Django for examples/django_send.py) is skipped, saying which.
examples/test_swap_policy.py is a pytest file: it runs under pytest in a
subprocess, as a user would run it in their own project.
"""

from __future__ import annotations

import os
import re
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


_MISSING = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")


def test_the_telling_lines_name_existing_scripts() -> None:
    assert set(TELLING) <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_runs(script: str) -> None:
    done = run(str(Path("examples") / script))
    missing = _MISSING.search(done.stderr)
    if done.returncode != 0 and missing and not missing.group(1).startswith("resilient_smtp"):
        pytest.skip(f"{script} needs {missing.group(1)}, which is not installed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert TELLING.get(script, "") in done.stdout, done.stdout + done.stderr


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
