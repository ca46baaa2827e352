"""Django's own SMTP backend tests, run against resilient_smtp's backend.

Usage: ``python scripts/django_mail_tests.py DJANGO_TESTS_DIR`` where
DJANGO_TESTS_DIR is the ``tests/`` directory of a Django 5.2 source
distribution (scripts/ci.d/django.sh downloads it from PyPI).

The adapter is the smallest that points the tests at our backend, with
every assertion unchanged: the ``smtp`` module the tests build backends
from (``smtp.EmailBackend(...)``) becomes one whose ``EmailBackend`` is
``resilient_smtp.contrib.django.EmailBackend``, and ``email_backend`` (the
``EMAIL_BACKEND`` setting of the shared ``BaseEmailBackendTests``) names
it.  The deliberate differences, each explained in docs/sync.md, are run as
expected failures, so that one starting to pass is reported too.

Runs SMTPBackendTests (which includes BaseEmailBackendTests) and
SMTPBackendStoppedServerTests; exits non-zero on any unexpected result.
"""

from __future__ import annotations

import sys
import types
import unittest

# Each deliberate difference, as listed in docs/sync.md.
DELIBERATE = {
    # A bare local part ("django") is refused: RFC 5321 wants a domain.
    "test_recipient_without_domain": "bare local part refused",
    "test_lazy_addresses": "bare local part refused (the lazy strings themselves work)",
    # Django keeps a half-set-up smtplib connection in _partial_connection
    # and checks its socket; ours closes every check connection.
    "test_reopen_replaces_partial_connection": "no half-open smtplib connection is kept",
    # Patches smtplib.SMTP.send to capture the data; we do not use smtplib
    # (CRLF on the wire is checked by tests/test_envelope.py instead).
    "test_email_msg_uses_crlf": "smtplib is not used",
}


def main(tests_dir: str) -> int:
    sys.path.insert(0, tests_dir)
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-mail-tests",
        INSTALLED_APPS=[],
        USE_TZ=True,
        EMAIL_BACKEND="resilient_smtp.contrib.django.EmailBackend",
    )
    django.setup()

    from mail import tests as suite  # Django's tests/mail/tests.py

    from resilient_smtp.contrib.django import EmailBackend

    assert suite.HAS_AIOSMTPD, "aiosmtpd is needed for Django's SMTP backend tests"
    suite.smtp = types.SimpleNamespace(EmailBackend=EmailBackend)  # type: ignore[attr-defined]
    suite.SMTPBackendTests.email_backend = "resilient_smtp.contrib.django.EmailBackend"
    for name in DELIBERATE:
        method = getattr(suite.SMTPBackendTests, name)
        setattr(suite.SMTPBackendTests, name, unittest.expectedFailure(method))

    loader = unittest.TestLoader()
    tests = unittest.TestSuite(
        [
            loader.loadTestsFromTestCase(suite.SMTPBackendTests),
            loader.loadTestsFromTestCase(suite.SMTPBackendStoppedServerTests),
        ]
    )
    result = unittest.TextTestRunner(verbosity=2).run(tests)
    passed = (
        result.testsRun
        - len(result.failures)
        - len(result.errors)
        - len(result.skipped)
        - len(result.expectedFailures)
        - len(result.unexpectedSuccesses)
    )
    print(
        f"\nDjango {django.get_version()} SMTP backend tests against resilient_smtp: "
        f"{passed} passed, {len(result.expectedFailures)} deliberate differences, "
        f"{len(result.failures) + len(result.errors)} failed, "
        f"{len(result.unexpectedSuccesses)} unexpectedly passed, "
        f"{len(result.skipped)} skipped, of {result.testsRun}"
    )
    return 0 if result.wasSuccessful() and not result.unexpectedSuccesses else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
