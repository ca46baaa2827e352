"""The script behind the test doubles: which reply to give at which stage.

``ScriptedSMTPServer`` (a real server) and ``ScriptedTransport`` (no
sockets) share it, so a test can move from one to the other unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing_extensions import Self

__all__ = ["DROP", "STAGES", "ReceivedMessage", "Script"]

DROP = "<drop>"
"""Use as a scripted reply: close the connection without answering."""

STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "end_of_data")


@dataclass
class _Rule:
    stage: str
    reply: str
    times: int | None
    recipient: str | None
    nth: int | None
    used: int = 0

    def fires(self, stage: str, recipient: str | None, nth: int) -> bool:
        if stage != self.stage or (self.times is not None and self.used >= self.times):
            return False
        if self.recipient is not None and recipient != self.recipient:
            return False
        return self.nth is None or self.nth == nth


@dataclass(frozen=True)
class ReceivedMessage:
    """A transaction the scripted peer accepted (250 after the data)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class Script:
    """Scripted replies, plus a record of what was received.

    :meth:`on` adds a rule: at ``stage``, answer ``reply`` (a reply starting
    with 421 also closes the connection, as real servers do; :data:`DROP`
    closes without a reply).  ``times`` limits how often the rule fires
    (``None``: always), ``recipient`` and ``nth`` (the 1-based RCPT number
    within the transaction) narrow it.  Rules are tried in the order added.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.messages: list[ReceivedMessage] = []
        """Transactions accepted, in order."""
        self.dropped_after_data: list[ReceivedMessage] = []
        """Messages whose end-of-data was dropped: the sender cannot know
        whether they were delivered."""
        self.connections = 0
        self.commands: list[str] = []

    def on(
        self,
        stage: str,
        reply: str,
        *,
        times: int | None = 1,
        recipient: str | None = None,
        nth: int | None = None,
    ) -> Self:
        """Script ``reply`` for ``stage``; returns ``self``, so calls chain."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
        if reply != DROP and not (len(reply) >= 3 and reply[:3].isdigit()):
            raise ValueError(f"reply must start with a 3-digit code or be DROP, not {reply!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, not {times!r}")
        self._rules.append(_Rule(stage, reply, times, recipient, nth))
        return self

    def clear(self) -> None:
        """Forget every rule: answer normally from now on."""
        self._rules.clear()

    def scripted(self, stage: str, recipient: str | None = None, nth: int = 0) -> str | None:
        """The reply scripted for this point, or ``None`` to answer normally."""
        for rule in self._rules:
            if rule.fires(stage, recipient, nth):
                rule.used += 1
                return rule.reply
        return None

    @property
    def delivered_to(self) -> list[str]:
        """Every recipient of every accepted message, repeats included."""
        return [r for m in self.messages for r in m.recipients]
