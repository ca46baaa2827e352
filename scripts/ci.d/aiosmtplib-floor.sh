#!/usr/bin/env bash
# The test suite against the LOWEST aiosmtplib the package allows.
#
# The main CI run (scripts/test) gets the newest aiosmtplib pip resolves; this
# one reads the floor from pyproject.toml (the ">=" of the aiosmtplib
# dependency), makes a fresh venv, installs the package with its test extras
# and exactly that aiosmtplib, and runs pytest.  A floor that the suite does
# not pass is a floor the package must not claim.
#
#   bash scripts/ci.d/aiosmtplib-floor.sh
#
# The venv lives in a temporary directory removed on exit, so running this
# twice is harmless.  The servers the tests use are (re)started by sourcing
# scripts/services/*.sh, which reuse a server already answering.
set -euo pipefail
cd "$(dirname "$0")/../.."

py=${PYTHON:-python3}

floor=$("$py" - <<'PY'
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    name = re.match(r"\s*([A-Za-z0-9_.-]+)", dep)
    if name and name.group(1).lower().replace("_", "-") == "aiosmtplib":
        low = re.search(r">=\s*([0-9][^,;\s]*)", dep)
        if low is None:
            sys.exit(f"the aiosmtplib dependency {dep!r} states no floor (>=)")
        print(low.group(1))
        break
else:
    sys.exit("pyproject.toml lists no aiosmtplib dependency")
PY
)
echo "== aiosmtplib floor from pyproject.toml: $floor"

for service in scripts/services/*.sh; do
  [ -e "$service" ] || continue
  # shellcheck disable=SC1090
  . "$service"
done

venv=$(mktemp -d "${TMPDIR:-/tmp}/resilient_smtp-floor.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$py" -m venv "$venv"
vpy="$venv/bin/python"
# Everything the suite needs, as scripts/test installs it (the dev extra),
# so the two runs differ in aiosmtplib alone.
"$vpy" -m pip install -q --disable-pip-version-check -e '.[dev]' "aiosmtplib==$floor"

got=$("$vpy" -c 'import importlib.metadata as m; print(m.version("aiosmtplib"))')
# 3.0 and 3.0.0 are the same version (packaging comes with pytest).
if ! "$vpy" -c 'import sys; from packaging.version import Version as V; sys.exit(V(sys.argv[1]) != V(sys.argv[2]))' "$got" "$floor"; then
  echo "expected aiosmtplib $floor in the floor venv, got $got" >&2
  exit 1
fi
echo "== pytest with aiosmtplib $got"
# The venv's own install of this checkout, nothing from outside it.
env -u PYTHONPATH "$vpy" -m pytest -q -p no:cacheprovider
