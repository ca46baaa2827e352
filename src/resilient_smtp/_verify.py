"""``Mailer.verify()``: can this Mailer reach its relays, step by step?

The step a user takes when mail does not go out (or before it ever does, as
nodemailer's ``transporter.verify()`` and Django's ``get_connection().open()``
are used): connect, EHLO (HELO if refused), STARTTLS with certificate
verification, AUTH, to each relay.  It goes through the Mailer's own
transport, the same ``connect()`` the Mailer sends through, so a check
cannot pass (or fail) a server the Mailer would treat differently.  It
never raises for a server's answer: each failure is in the report, with
its classification saying what to fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from ._classify.classifier import Classification, Classifier
from ._classify.taxonomy import Stage
from ._mx import MXResolver, mx_order, resolution_failure
from ._transport.connection import Transport
from ._transport.transaction import NO_REPLY

__all__ = ["RelayCheck", "VerifyReport", "VerifyStep", "render", "verify_relays"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyStep:
    """One step of the connect sequence: ``stage`` is ``connect``, ``ehlo``,
    ``helo``, ``starttls`` or ``auth``; ``detail`` the server's reply text, or
    the error's text when it failed."""

    stage: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCheck:
    """How connecting to one relay went."""

    host: str
    port: int
    ok: bool
    steps: tuple[VerifyStep, ...] = ()
    extensions: Mapping[str, str] = field(default_factory=dict)
    """What EHLO offered (the last EHLO: after STARTTLS if it ran)."""
    classification: Classification | None = None
    """Why it failed, and what to do about it (``None`` when ``ok``)."""
    error: BaseException | None = None
    """The exception behind the failure (``None`` when ``ok``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What :meth:`Mailer.verify` found: one :class:`RelayCheck` per relay."""

    relays: tuple[RelayCheck, ...]

    @property
    def ok(self) -> bool:
        """Every relay accepted the whole connect sequence."""
        return bool(self.relays) and all(r.ok for r in self.relays)

    @property
    def error(self) -> BaseException | None:
        """The first failure's exception, or ``None``."""
        return next((r.error for r in self.relays if r.error is not None), None)

    @property
    def classification(self) -> Classification | None:
        """The first failure's classification, or ``None``."""
        return next((r.classification for r in self.relays if r.classification), None)


class _Steps:
    """Collects the transport's step notices into :class:`VerifyStep` rows."""

    def __init__(self) -> None:
        self.done: list[VerifyStep] = []
        self.current: str | None = None
        self.extensions: dict[str, str] = {}

    def __call__(self, stage: str, reply: aiosmtplib.SMTPResponse | None) -> None:
        if reply is None:
            self.current = stage
            return
        self.current = None
        lines = reply.message.splitlines()
        if stage == "ehlo":
            # RFC 5321 §4.1.1.1: the lines after the first name extensions.
            self.extensions = {}
            for line in lines[1:]:
                name, _, params = line.strip().partition(" ")
                if name:
                    self.extensions[name.lower()] = params
        detail = f"{reply.code} {lines[0] if lines else ''}"
        self.done.append(VerifyStep(stage=stage, ok=True, detail=detail.strip()))


def _stage(name: str) -> Stage | None:
    name = "ehlo" if name == "helo" else name
    try:
        return Stage(name)
    except ValueError:
        return None


async def check_relay(
    transport: Transport, classifier: Classifier, host: str, port: int
) -> RelayCheck:
    """Run the transport's connect sequence to ``host:port`` and close."""
    steps = _Steps()
    connect: Callable[..., Any] = transport.connect
    verbose = "on_step" in inspect.signature(connect).parameters
    try:
        conn = await (connect(host, port, on_step=steps) if verbose else connect(host, port))
    except NO_REPLY as exc:
        stage = steps.current or ("connect" if not steps.done else steps.done[-1].stage)
        c = classifier.classify(exc, host=host, stage=_stage(stage))
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            text = f"{exc.code} {exc.message}"  # the server's own words
        else:
            text = str(exc) or type(exc).__name__
        rows = (*steps.done, VerifyStep(stage=stage, ok=False, detail=text))
        return RelayCheck(
            host=host,
            port=port,
            ok=False,
            steps=rows,
            extensions=steps.extensions,
            classification=c,
            error=exc,
        )
    await conn.close()
    rows = tuple(steps.done) or (VerifyStep(stage="connect", ok=True, detail="connected"),)
    return RelayCheck(host=host, port=port, ok=True, steps=rows, extensions=steps.extensions)


async def verify_relays(
    transport: Transport,
    classifier: Classifier,
    relays: Sequence[tuple[str, int]],
    *,
    mx: MXResolver | None = None,
    mx_port: int = 25,
    domains: Iterable[str] = (),
) -> VerifyReport:
    """Check each relay in turn (for MX delivery: each MX host of each of
    ``domains``).  A DNS failure is reported as that domain's check."""
    targets = list(relays)
    checks: list[RelayCheck] = []
    if mx is not None:
        for domain in domains:
            try:
                hosts = mx_order(domain, await mx(domain))
            except Exception as exc:  # DNS trouble is a finding, not a crash
                c = resolution_failure(domain, exc)
                row = VerifyStep(stage="dns", ok=False, detail=c.explanation)
                checks.append(
                    RelayCheck(
                        host=domain,
                        port=mx_port,
                        ok=False,
                        steps=(row,),
                        classification=c,
                        error=exc,
                    )
                )
                continue
            targets.extend((h, mx_port) for h in hosts)
    for host, port in targets:
        checks.append(await check_relay(transport, classifier, host, port))
    return VerifyReport(relays=tuple(checks))


_WHAT_IT_MEANS = {
    "starttls": "the certificate verified",
    "auth": "logged in",
}


def render(report: VerifyReport) -> str:
    """The report as text, one line per step, then what EHLO offers and the
    explanation of any failure."""
    lines: list[str] = []
    for relay in report.relays:
        lines.append(f"Checking {relay.host}:{relay.port}")
        for s in relay.steps:
            detail = s.detail
            if s.ok and s.stage in _WHAT_IT_MEANS:
                detail = f"{detail} ({_WHAT_IT_MEANS[s.stage]})"
            lines.append(f"  [{'ok' if s.ok else 'FAIL'}] {s.stage}: {detail}")
        if relay.extensions:
            offered = ", ".join(
                f"{k.upper()} {v}".strip() for k, v in sorted(relay.extensions.items())
            )
            lines.append(f"  EHLO offers: {offered}")
        c = relay.classification
        if c is not None:
            lines.append(
                f"  => {c.reason.value} ({'transient' if c.transient else 'permanent'}), "
                f"{c.action.value}: {c.explanation}"
            )
    if not report.relays:
        lines.append("nothing to check: give domains= for MX delivery")
    return "\n".join(lines)
