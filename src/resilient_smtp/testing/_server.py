"""The aiosmtpd protocol behind ``testing.ScriptedSMTPServer`` (imported
only when a scripted server starts, so aiosmtpd stays a test dependency)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from ._script import DROP, ReceivedMessage

if TYPE_CHECKING:
    from ._script import Script

__all__ = ["make_protocol"]

_ADDR = re.compile(r"<([^>]*)>")


class _Handler:
    def __init__(self, script: Script) -> None:
        self.script = script

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.script.commands.append(".")
        content = envelope.original_content or b""
        msg = ReceivedMessage(envelope.mail_from or "", tuple(envelope.rcpt_tos), content)
        reply = self.script.scripted("end_of_data")
        if reply == DROP:
            self.script.dropped_after_data.append(msg)
            if server.transport is not None:
                server.transport.close()
            return "250 OK"  # never reaches the client
        if reply is not None:
            return reply
        self.script.messages.append(msg)
        return "250 2.0.0 OK: queued"


class _ScriptedSMTP(SMTP):
    def __init__(self, script: Script) -> None:
        super().__init__(_Handler(script), hostname="scripted.test", enable_SMTPUTF8=True)
        self.script = script
        self._greeted = False
        self._rcpt_n = 0

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if not self._greeted and text.startswith("220"):
            self._greeted = True
            self.script.connections += 1
            scripted = self.script.scripted("connect")
            if scripted is not None:
                if scripted == DROP:
                    self._drop()
                    return
                text = scripted
                if not text.startswith("421"):
                    await super().push(text)
                    return
        await super().push(text)
        if text.startswith("421"):
            self._drop()

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _scripted(self, stage: str, recipient: str | None = None) -> bool:
        reply = self.script.scripted(stage, recipient, self._rcpt_n)
        if reply is None:
            return False
        if reply == DROP:
            self._drop()
        else:
            await self.push(reply)
        return True

    async def smtp_EHLO(self, hostname: str) -> None:
        self.script.commands.append("EHLO")
        if not await self._scripted("ehlo"):
            await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str) -> None:
        self.script.commands.append("MAIL")
        self._rcpt_n = 0
        if not await self._scripted("mail"):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.script.commands.append("RCPT")
        self._rcpt_n += 1
        m = _ADDR.search(arg or "")
        if not await self._scripted("rcpt", m.group(1) if m else None):
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self.script.commands.append("DATA")
        if not await self._scripted("data"):
            await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.script.commands.append("RSET")
        self._rcpt_n = 0
        await super().smtp_RSET(arg)


def make_protocol(script: Script) -> SMTP:
    return _ScriptedSMTP(script)
