"""``python -m resilient_smtp check HOST[:PORT]``: verify a server's setup.

The step a user takes when 421s start: can we connect, what does EHLO
offer (STARTTLS, SIZE, PIPELINING, AUTH mechanisms), does STARTTLS work with
a certificate that verifies, do the credentials work.  A thin printer over
:meth:`resilient_smtp.Mailer.verify`, so the check takes the very connect
path the Mailer sends by (HELO fallback, ``local_hostname`` and all); every
failure is explained by the classifier, so the output says what to fix.
"""

from __future__ import annotations

import ssl

from .._mailer import Mailer
from .._transport.connection import TLSMode
from .._verify import VerifyReport, render

__all__ = ["check_server", "render"]


async def check_server(
    host: str,
    port: int,
    *,
    tls: TLSMode = "starttls",
    username: str | None = None,
    password: str | None = None,
    timeout: float = 15.0,
    tls_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> VerifyReport:
    """Connect, EHLO, STARTTLS (verifying the certificate) and AUTH to
    ``host:port`` with a Mailer configured as given; see :func:`render`."""
    async with Mailer(
        (host, port),
        tls=tls,
        username=username,
        password=password,
        timeout=timeout,
        tls_context=tls_context,
        local_hostname=local_hostname,
    ) as mailer:
        return await mailer.verify()
