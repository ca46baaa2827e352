#!/usr/bin/env bash
# Django's own SMTP backend tests (Django 5.2: tests/mail/tests.py,
# SMTPBackendTests with the shared BaseEmailBackendTests, and
# SMTPBackendStoppedServerTests) against resilient_smtp's Django backend,
# through scripts/django_mail_tests.py (their assertions unchanged; the
# deliberate differences are listed in docs/sync.md).
#
# The tests ship only in Django's source distribution, so it is downloaded
# from PyPI.  Django 5.2 is installed in a throw-away venv that sees the
# project's other dependencies, so the shared environment keeps its own
# Django.  Servers: the tests' aiosmtpd Controller, on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m venv --system-site-packages "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --disable-pip-version-check 'django==5.2.*' 'aiosmtpd>=1.4'
"$vpy" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  'django==5.2.*' -d "$work/sdist"
tar -xzf "$work"/sdist/[Dd]jango-5.2*.tar.gz -C "$work" --wildcards '*/tests/mail/*'

PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
  "$vpy" scripts/django_mail_tests.py "$(echo "$work"/[Dd]jango-5.2*/tests)"
