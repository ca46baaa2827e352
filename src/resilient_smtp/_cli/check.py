"""``python -m resilient_smtp check HOST[:PORT]``: verify a server's setup.

The step a user takes when 421s start: can we connect, what does EHLO
offer (STARTTLS, SIZE, PIPELINING, AUTH mechanisms), does STARTTLS work with
a certificate that verifies, do the credentials work.  Every failure is
explained by the classifier, so the output says what to fix.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from .._classify.classifier import Classification, classify
from .._classify.taxonomy import Stage

__all__ = ["CheckReport", "check_server"]


@dataclass
class CheckReport:
    """What the check found, step by step."""

    host: str
    port: int
    steps: list[tuple[str, bool, str]] = field(default_factory=list)
    extensions: dict[str, str] = field(default_factory=dict)
    failure: Classification | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and all(ok for _, ok, _ in self.steps)

    def add(self, step: str, ok: bool, detail: str) -> None:
        self.steps.append((step, ok, detail))

    def render(self) -> str:
        lines = [f"Checking {self.host}:{self.port}"]
        for step, ok, detail in self.steps:
            lines.append(f"  [{'ok' if ok else 'FAIL'}] {step}: {detail}")
        if self.extensions:
            lines.append(
                "  EHLO offers: "
                + ", ".join(f"{k.upper()} {v}".strip() for k, v in sorted(self.extensions.items()))
            )
        if self.failure is not None:
            c = self.failure
            lines.append(
                f"  => {c.reason.value} ({'transient' if c.transient else 'permanent'}), "
                f"{c.action.value}: {c.explanation}"
            )
        return "\n".join(lines)


async def check_server(
    host: str,
    port: int,
    *,
    tls: str = "starttls",
    username: str | None = None,
    password: str | None = None,
    timeout: float = 15.0,
    tls_context: ssl.SSLContext | None = None,
    smtp_factory: Callable[..., aiosmtplib.SMTP] = aiosmtplib.SMTP,
) -> CheckReport:
    """Connect, EHLO, STARTTLS (verifying the certificate) and AUTH."""
    report = CheckReport(host, port)
    smtp = smtp_factory(
        hostname=host,
        port=port,
        use_tls=tls == "implicit",
        start_tls=False,
        validate_certs=True,
        tls_context=tls_context,
        timeout=timeout,
    )
    stage = Stage.CONNECT
    try:
        greeting = await smtp.connect()
        report.add("connect", True, f"{greeting.code} {greeting.message}".strip())
        stage = Stage.EHLO
        await smtp.ehlo()
        report.extensions = dict(smtp.esmtp_extensions)
        report.add("EHLO", True, f"{len(report.extensions)} extensions")
        if tls == "starttls":
            stage = Stage.STARTTLS
            if not smtp.supports_extension("starttls"):
                raise aiosmtplib.SMTPNotSupported(
                    f"{host} does not offer STARTTLS: mail to it would travel in plaintext"
                )
            await smtp.starttls(tls_context=tls_context)
            report.add("STARTTLS", True, "the certificate verified")
            stage = Stage.EHLO
            await smtp.ehlo()
            report.extensions = dict(smtp.esmtp_extensions)
        if username is not None and password is not None:
            stage = Stage.AUTH
            if not smtp.supports_extension("auth"):
                raise aiosmtplib.SMTPNotSupported(f"{host} does not offer AUTH here")
            await smtp.login(username, password)
            report.add("AUTH", True, f"logged in as {username}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        report.failure = classify(exc, host=host, stage=stage)
        report.add(str(stage), False, report.failure.reply.text or type(exc).__name__)
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()
    return report
