"""What a reply *does*: the one table of reactions, keyed by reason.

The classifier says what a reply means (a :class:`Reason`); this table says
what follows from it, for every part that acts on a reply:

* ``recipient``: the recipient the reply was about (``"retry"``: it stays
  pending and the retry policy decides; ``"give_up"``: final; ``"by_code"``:
  a 4xx retries, a 5xx gives up; ``"hold"``: deferred, not retried in
  this send, because a human must fix a setting first; rejecting every
  recipient for it would lose mail that goes through once it is fixed).
* ``others``: the other recipients of the same transaction (``"keep"``:
  untouched, each has its own reply; ``"retry"``: the session ended, so
  accepted and untried recipients wait for a new connection, they are
  *never* settled by another recipient's reply; ``"split"``: the rest go
  in a new transaction at once).
* ``connection``: ``"keep"`` it, or ``"close"`` it (a new one is opened).
* ``relay``: ``"same"``, or ``"next"``: the next relay or MX host is
  preferred for the retry (Postfix tries the next MX after a recoverable
  failure, and skips a host that greets with 5xx: ``smtp_skip_5xx_greeting``).
* ``rate``: ``"cut"`` the destination's message rate (the adaptive
  limiter's pushback), or ``"none"``.
* ``concurrency``: ``"reduce"`` the destination's connection window (the
  pool), or ``"none"``.
* ``health``: ``"count"`` towards the destination's circuit breaker,
  ``"suspend"`` it at once, ``"pause_relay"`` (the whole sending account),
  or ``"none"``.
* ``retry_floor``: the least wait before this message is retried, in
  seconds (0: none); ``floor_grows`` doubles it each time it recurs in one
  send; ``reconnect_at_once`` waives any wait the first time.
* ``paced``: when the limiter reports that it took the pushback
  (``Limiter.feedback`` returned ``True``), the retry goes back through the
  limiter with no floor: the limiter already slowed the destination, a
  fixed sleep on top punishes the same pushback twice.
* ``retry_cost``: tokens a retry takes from a shared
  :class:`~resilient_smtp.RetryBudget` (``None``: the budget's own cost).
* ``configuration``: a human must fix a setting; the Mailer logs it at
  WARNING, emits a ``"configuration_error"`` event, and the result says so.

One rule is about the stage, not the reason: a reply at the greeting, EHLO,
STARTTLS or AUTH refuses the *session*, not a recipient.  The Mailer moves
to the next relay or MX host and, with none left, defers the recipients
with the cause stated; it never rejects them for it.  A 421 is never
permanent for anyone (RFC 5321 §4.2.3: the service is closing the channel).

Rows keyed by ``(reason, stage)`` override the reason's row at that stage.
Users read the table as :data:`REACTIONS` and override rows with
:meth:`Reactions.replace` and ``Mailer(reactions=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from .taxonomy import Reason, Stage

__all__ = ["REACTIONS", "SESSION_STAGES", "Reaction", "Reactions"]

RecipientFate = Literal["retry", "give_up", "by_code", "hold"]
OthersFate = Literal["keep", "retry", "split"]
ConnectionFate = Literal["keep", "close"]
RelayChoice = Literal["same", "next"]
RateEffect = Literal["cut", "none"]
ConcurrencyEffect = Literal["reduce", "none"]
HealthEffect = Literal["count", "suspend", "pause_relay", "none"]

SESSION_STAGES: frozenset[Stage] = frozenset(
    {Stage.CONNECT, Stage.EHLO, Stage.STARTTLS, Stage.AUTH}
)
"""Stages whose refusal is about the session, never about a recipient."""

_CHOICES: dict[str, tuple[str, ...]] = {
    "recipient": ("retry", "give_up", "by_code", "hold"),
    "others": ("keep", "retry", "split"),
    "connection": ("keep", "close"),
    "relay": ("same", "next"),
    "rate": ("cut", "none"),
    "concurrency": ("reduce", "none"),
    "health": ("count", "suspend", "pause_relay", "none"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaction:
    """What one reason's reply does; see the module docstring for each field."""

    recipient: RecipientFate
    others: OthersFate = "keep"
    connection: ConnectionFate = "keep"
    relay: RelayChoice = "same"
    rate: RateEffect = "none"
    concurrency: ConcurrencyEffect = "none"
    health: HealthEffect = "none"
    retry_floor: float = 0.0
    floor_grows: bool = False
    reconnect_at_once: bool = False
    paced: bool = False
    retry_cost: float | None = None
    configuration: bool = False
    why: str = ""
    """One line on why: shown in the rendered table."""

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Reaction.{name} must be one of {allowed}, not {value!r}")
        floor = self.retry_floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor >= 0:
            raise ValueError(f"Reaction.retry_floor must be a number >= 0, not {floor!r}")
        if self.retry_cost is not None and not self.retry_cost >= 0:
            raise ValueError(f"Reaction.retry_cost must be >= 0 or None, not {self.retry_cost!r}")

    def replace(self, **changes: Any) -> Reaction:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


Key = Reason | tuple[Reason, Stage]


class Reactions(Mapping[Key, Reaction]):
    """The reactions table: a read-only mapping from a reason (or a
    ``(reason, stage)`` pair) to its :class:`Reaction`.

    Every reason has a row; :meth:`for_reply` picks the stage row when one
    exists.  Build a changed table with :meth:`replace`.
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: Mapping[Key, Reaction]) -> None:
        missing = [r.value for r in Reason if r not in rows]
        if missing:
            raise ValueError(f"the reactions table has no row for {', '.join(missing)}")
        for key, row in rows.items():
            reason = key[0] if isinstance(key, tuple) else key
            if not isinstance(reason, Reason) or not isinstance(row, Reaction):
                raise TypeError(f"bad reactions row {key!r}: {row!r}")
        self._rows: Mapping[Key, Reaction] = MappingProxyType(dict(rows))

    def __getitem__(self, key: Key) -> Reaction:
        return self._rows[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"Reactions({len(self._rows)} rows)"

    def for_reply(self, reason: Reason, stage: Stage | None = None) -> Reaction:
        """The reaction to ``reason`` at ``stage`` (the stage row if any)."""
        if stage is not None:
            row = self._rows.get((reason, stage))
            if row is not None:
                return row
        return self._rows[reason]

    def replace(self, key: Key, **changes: Any) -> Reactions:
        """A new table whose row ``key`` has ``changes`` (a stage row that
        does not exist yet starts as a copy of its reason's row)."""
        rows = dict(self._rows)
        base = rows.get(key) or rows[key[0] if isinstance(key, tuple) else key]
        rows[key] = base.replace(**changes)
        return Reactions(rows)

    def reasons(self, **match: Any) -> frozenset[Reason]:
        """The reasons whose own row has every field in ``match``:
        ``reasons(rate="cut")`` is the set the adaptive limiter cuts on."""
        return frozenset(
            k
            for k, row in self._rows.items()
            if isinstance(k, Reason) and all(getattr(row, f) == v for f, v in match.items())
        )

    def floors(self) -> Mapping[Reason, float]:
        """The per-reason retry floors (only the non-zero ones)."""
        return MappingProxyType(
            {
                k: row.retry_floor
                for k, row in self._rows.items()
                if isinstance(k, Reason) and row.retry_floor > 0
            }
        )

    def costs(self) -> Mapping[Reason, float]:
        """The per-reason retry-budget costs the table sets."""
        return MappingProxyType(
            {
                k: row.retry_cost
                for k, row in self._rows.items()
                if isinstance(k, Reason) and row.retry_cost is not None
            }
        )


R = Reason
_row = Reaction

# The defaults.  Sources: RFC 5321 (§4.2.3 421 closes the channel, §4.5.3.1.10
# too many recipients, §4.5.4.1 retry at least 30 min), Postfix's defaults
# (minimal_backoff_time 300 s, smtp_skip_5xx_greeting, dead-destination
# handling), botocore's retry quota (a timeout costs 10), and our judgement
# where no standard speaks (said so in ``why``).
REACTIONS = Reactions(
    {
        R.GREYLISTED: _row(
            recipient="retry",
            retry_floor=300.0,
            why="postgrey's --delay and Postfix's minimal_backoff_time are 300 s",
        ),
        # The retry after pushback on the rate goes on a fresh session: a
        # server may slow every reply of a session that keeps erring
        # (Postfix's smtpd_soft_error_limit 10 and smtpd_error_sleep_time
        # 1 s, postfix.org/postconf.5.html; a refused pipelined MAIL is
        # three errors there).
        R.RATE_LIMITED: _row(
            recipient="retry",
            connection="close",
            rate="cut",
            retry_floor=10.0,
            paced=True,
            why="the limiter slows the destination; the floor applies only when it did not",
        ),
        R.TOO_MANY_CONNECTIONS: _row(
            recipient="retry",
            others="retry",
            connection="close",
            rate="cut",
            concurrency="reduce",
            retry_floor=5.0,
            paced=True,
            why="fewer parallel connections; the limiter spaces the new ones",
        ),
        # Resolved: a session limit is the server's housekeeping (too many
        # messages on one connection), not a sign of a rate: reconnect, no
        # rate cut, no budget cost.
        R.SESSION_LIMIT: _row(
            recipient="retry",
            others="retry",
            connection="close",
            reconnect_at_once=True,
            retry_cost=0.0,
            why="a new connection cures it; not pushback on the rate",
        ),
        R.TOO_MANY_RECIPIENTS: _row(
            recipient="retry",
            others="split",
            why="RFC 5321 §4.5.3.1.10: send the rest in another transaction",
        ),
        # Resolved: the "long, growing back-off for the whole destination"
        # *is* health's suspension (severe base, doubling); the per-message
        # floor matches it so messages come back when it ends, and the rate
        # is cut so the destination resumes slower.
        R.REPUTATION_DEFERRAL: _row(
            recipient="retry",
            connection="close",
            rate="cut",
            health="suspend",
            retry_floor=900.0,
            floor_grows=True,
            why="Gmail 4.7.28 / Yahoo TSS04 last tens of minutes; back off growing",
        ),
        R.BLOCKLISTED: _row(
            recipient="give_up",
            others="retry",
            connection="close",
            relay="next",
            health="suspend",
            why="our IP is listed: stop sending there; another host may take it",
        ),
        R.SPAM_CONTENT: _row(recipient="give_up", why="this message as it is will not pass"),
        R.AUTH_POLICY: _row(
            recipient="hold",
            others="retry",
            relay="next",
            configuration=True,
            why="the server wants authentication we did not give",
        ),
        R.TLS_REQUIRED: _row(
            recipient="hold",
            others="retry",
            connection="close",
            relay="next",
            configuration=True,
            why="TLS cannot be agreed: a setting, not a verdict on the recipients",
        ),
        # Resolved: wrong credentials are a configuration error, not a
        # health event; pausing the relay would hide the cause behind
        # "paused" while the cause is in every result.
        R.AUTH_CREDENTIALS: _row(
            recipient="hold",
            others="retry",
            connection="close",
            relay="next",
            configuration=True,
            why="fix the credentials; another relay may take them",
        ),
        R.SENDING_QUOTA: _row(
            recipient="retry",
            others="retry",
            health="pause_relay",
            retry_floor=3600.0,
            why="the account's quota resets by the hour or the day",
        ),
        R.SERVER_BUSY: _row(
            recipient="retry",
            others="retry",
            connection="close",
            relay="next",
            health="count",
            why="Postfix counts these towards a dead destination",
        ),
        R.CONNECTION_ERROR: _row(
            recipient="retry",
            others="retry",
            connection="close",
            relay="next",
            health="count",
            reconnect_at_once=True,
            retry_cost=10.0,
            why="botocore charges a timeout 10 tokens; one reconnect is free",
        ),
        R.PROTOCOL_ERROR: _row(
            recipient="by_code",
            others="retry",
            connection="close",
            why="the session is out of step; a new one may not be",
        ),
        R.MAILBOX_FULL: _row(
            recipient="by_code",
            retry_floor=1800.0,
            why="RFC 5321 §4.5.4.1: retry at least 30 minutes later",
        ),
        R.RECIPIENT_UNKNOWN: _row(recipient="give_up", why="no such mailbox"),
        R.MAILBOX_DISABLED: _row(recipient="give_up", why="the mailbox is closed"),
        R.DOMAIN_UNKNOWN: _row(recipient="give_up", why="the domain does not take mail"),
        R.RELAY_DENIED: _row(
            recipient="give_up",
            relay="next",
            configuration=True,
            why="this relay will not relay for us",
        ),
        R.SENDER_REJECTED: _row(
            recipient="by_code",
            configuration=True,
            why="the envelope sender is refused",
        ),
        R.MESSAGE_TOO_LARGE: _row(recipient="give_up", why="a smaller message might pass"),
        R.POLICY_REJECTED: _row(recipient="give_up", why="a site policy refused this one"),
        R.CONTENT_REJECTED: _row(recipient="give_up", why="the content breaks a rule"),
        R.EXPIRED: _row(recipient="give_up", why="the send's time is up"),
        R.UNCLASSIFIED: _row(recipient="by_code", why="the code class decides"),
        R.ACCEPTED: _row(recipient="by_code", why="a 2xx: the server took it; nothing to do"),
    }
)
"""The default reactions, one row per :class:`Reason`."""


def render_markdown(table: Reactions = REACTIONS) -> str:
    """The table as Markdown (docs/reactions.md is checked against this)."""
    head = (
        "| reason | stage | recipient | others | connection | relay | rate | concurrency "
        "| health | floor (s) | paced | config | why |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for key, r in table.items():
        reason, stage = key if isinstance(key, tuple) else (key, None)
        floor = f"{r.retry_floor:g}" + (" ×2" if r.floor_grows else "")
        if r.reconnect_at_once:
            floor += " (first: 0)"
        lines.append(
            f"| `{reason.value}` | {stage.value if stage else 'any'} | {r.recipient} "
            f"| {r.others} | {r.connection} | {r.relay} | {r.rate} | {r.concurrency} "
            f"| {r.health} | {floor} | {'yes' if r.paced else ''} "
            f"| {'yes' if r.configuration else ''} | {r.why} |"
        )
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m resilient_smtp._classify.reactions
    print(render_markdown(), end="")
