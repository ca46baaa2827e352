"""The vocabulary of classification: reasons, actions, scopes, stages.

Each :class:`Reason` carries a default answer to "may a later try succeed?"
and "what should the sender do?" (the table below; docs/classification.md
explains each reason).
The functions here are pure lookups so the classifier, the retry policy and
the limiters all read the same table.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "DEFERRED_BY_4XX",
    "Action",
    "Reason",
    "Scope",
    "Stage",
    "action_for",
    "default_transient",
    "scope_for",
]


class _StrEnum(str, Enum):
    """``str`` mix-in enum whose ``str()`` is its value (as 3.11's StrEnum)."""

    def __str__(self) -> str:
        return str(self.value)


class Reason(_StrEnum):
    """Why a server refused, deferred or dropped us."""

    GREYLISTED = "greylisted"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SESSION_LIMIT = "session_limit"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    REPUTATION_DEFERRAL = "reputation_deferral"
    BLOCKLISTED = "blocklisted"
    SPAM_CONTENT = "spam_content"
    AUTH_POLICY = "auth_policy"
    TLS_REQUIRED = "tls_required"
    AUTH_CREDENTIALS = "auth_credentials"
    SENDING_QUOTA = "sending_quota"
    SERVER_BUSY = "server_busy"
    CONNECTION_ERROR = "connection_error"
    PROTOCOL_ERROR = "protocol_error"
    MAILBOX_FULL = "mailbox_full"
    RECIPIENT_UNKNOWN = "recipient_unknown"
    MAILBOX_DISABLED = "mailbox_disabled"
    DOMAIN_UNKNOWN = "domain_unknown"
    RELAY_DENIED = "relay_denied"
    SENDER_REJECTED = "sender_rejected"
    MESSAGE_TOO_LARGE = "message_too_large"
    POLICY_REJECTED = "policy_rejected"
    CONTENT_REJECTED = "content_rejected"
    EXPIRED = "expired"
    UNCLASSIFIED = "unclassified"
    ACCEPTED = "accepted"
    """A 2xx reply: the server did what was asked; nothing to retry or fix."""


class Action(_StrEnum):
    """What the sender should do next."""

    RETRY_LATER = "retry_later"
    """Retry the same message later (after the stated wait, if any)."""
    SLOW_DOWN = "slow_down"
    """Lower the destination's message rate, then retry."""
    REDUCE_CONCURRENCY = "reduce_concurrency"
    """Use fewer parallel connections to the destination, reconnect shortly."""
    RECONNECT = "reconnect"
    """Open a new connection and carry on."""
    SPLIT_TRANSACTION = "split_transaction"
    """Send the remaining recipients in a new transaction."""
    BACK_OFF_DESTINATION = "back_off_destination"
    """Long, growing back-off for the whole destination; alert a human."""
    SUSPEND_DESTINATION = "suspend_destination"
    """Stop sending to this destination for a while; alert a human."""
    PAUSE_SENDER = "pause_sender"
    """Pause the sending account until its quota resets."""
    FIX_CONFIGURATION = "fix_configuration"
    """A human must fix a setting (DNS, TLS, credentials, relay)."""
    GIVE_UP_RECIPIENT = "give_up_recipient"
    """This recipient will not get the message."""
    GIVE_UP_MESSAGE = "give_up_message"
    """This message will not be delivered as it is."""
    NONE = "none"
    """Nothing to do: the server accepted (a 2xx reply)."""


class Scope(_StrEnum):
    """Who the reply is about: one recipient, the message, the connection,
    the destination host, or our own sending identity."""

    RECIPIENT = "recipient"
    MESSAGE = "message"
    CONNECTION = "connection"
    DESTINATION = "destination"
    SENDER = "sender"


class Stage(_StrEnum):
    """The step of the SMTP dialogue a reply answered."""

    CONNECT = "connect"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"


R = Reason
A = Action
S = Scope

# reason -> (transient default, action when transient, scope).  ``None`` as
# transient means "decided by the reply's code class" (RFC 5321 §4.2.1).
_TABLE: dict[Reason, tuple[bool | None, Action, Scope]] = {
    R.GREYLISTED: (True, A.RETRY_LATER, S.RECIPIENT),
    R.RATE_LIMITED: (True, A.SLOW_DOWN, S.DESTINATION),
    R.TOO_MANY_CONNECTIONS: (True, A.REDUCE_CONCURRENCY, S.DESTINATION),
    R.SESSION_LIMIT: (True, A.RECONNECT, S.CONNECTION),
    R.TOO_MANY_RECIPIENTS: (True, A.SPLIT_TRANSACTION, S.MESSAGE),
    R.REPUTATION_DEFERRAL: (True, A.BACK_OFF_DESTINATION, S.DESTINATION),
    R.BLOCKLISTED: (False, A.SUSPEND_DESTINATION, S.DESTINATION),
    R.SPAM_CONTENT: (False, A.GIVE_UP_MESSAGE, S.MESSAGE),
    R.AUTH_POLICY: (False, A.FIX_CONFIGURATION, S.SENDER),
    R.TLS_REQUIRED: (False, A.FIX_CONFIGURATION, S.CONNECTION),
    R.AUTH_CREDENTIALS: (False, A.FIX_CONFIGURATION, S.SENDER),
    R.SENDING_QUOTA: (True, A.PAUSE_SENDER, S.SENDER),
    R.SERVER_BUSY: (True, A.RECONNECT, S.DESTINATION),
    R.CONNECTION_ERROR: (True, A.RECONNECT, S.CONNECTION),
    R.PROTOCOL_ERROR: (None, A.RECONNECT, S.CONNECTION),
    R.MAILBOX_FULL: (None, A.RETRY_LATER, S.RECIPIENT),
    R.RECIPIENT_UNKNOWN: (False, A.GIVE_UP_RECIPIENT, S.RECIPIENT),
    R.MAILBOX_DISABLED: (False, A.GIVE_UP_RECIPIENT, S.RECIPIENT),
    R.DOMAIN_UNKNOWN: (False, A.GIVE_UP_RECIPIENT, S.RECIPIENT),
    R.RELAY_DENIED: (False, A.FIX_CONFIGURATION, S.SENDER),
    R.SENDER_REJECTED: (None, A.FIX_CONFIGURATION, S.SENDER),
    R.MESSAGE_TOO_LARGE: (False, A.GIVE_UP_MESSAGE, S.MESSAGE),
    R.POLICY_REJECTED: (False, A.GIVE_UP_MESSAGE, S.MESSAGE),
    R.CONTENT_REJECTED: (False, A.FIX_CONFIGURATION, S.MESSAGE),
    R.EXPIRED: (False, A.GIVE_UP_MESSAGE, S.MESSAGE),
    R.UNCLASSIFIED: (None, A.RETRY_LATER, S.MESSAGE),
    # RFC 5321 §4.2.1: 2yz "positive completion".  Not transient: there is
    # nothing to try again.
    R.ACCEPTED: (False, A.NONE, S.MESSAGE),
}

# What to do when a reason that is usually transient turns out permanent
# (a 5xx mailbox full, a 5xx protocol error, a permanent unclassified reply).
_PERMANENT_ACTION: dict[Scope, Action] = {
    S.RECIPIENT: A.GIVE_UP_RECIPIENT,
    S.MESSAGE: A.GIVE_UP_MESSAGE,
    S.CONNECTION: A.GIVE_UP_MESSAGE,
    S.DESTINATION: A.GIVE_UP_MESSAGE,
    S.SENDER: A.FIX_CONFIGURATION,
}


_GIVE_UP = frozenset({A.GIVE_UP_RECIPIENT, A.GIVE_UP_MESSAGE})

DEFERRED_BY_4XX: frozenset[Reason] = frozenset(
    {
        R.RECIPIENT_UNKNOWN,
        R.MAILBOX_DISABLED,
        R.DOMAIN_UNKNOWN,
        R.POLICY_REJECTED,
        R.AUTH_POLICY,
        R.BLOCKLISTED,
        R.RELAY_DENIED,
        R.CONTENT_REJECTED,
    }
)
"""Reasons that are permanent with a 5xx but transient with a 4xx.

A server that knows its verdict is final says 5xx; a 4xx for the same words
is the server choosing not to be final, usually because the check itself may
have failed for a passing reason, and its own clients retry it.  Postfix:

- ``unknown_address_reject_code = 450`` (default): "450 4.1.2 <x>: Recipient
  address rejected: Domain not found" is also what a DNS time-out gives
  (``reject_unknown_recipient_domain``);
- ``unknown_client_reject_code = 450``, and "450 4.7.25 Client host
  rejected: cannot find your hostname" is always 450 when the reverse
  look-up failed temporarily (``reject_unknown_client_hostname``,
  src/smtpd/smtpd_check.c);
- ``unverified_recipient_reject_code = 450`` (address verification);
- ``soft_bounce = yes`` turns every 5xx reject into a 4xx, "to keep mail
  queued that would otherwise be returned"; Sendmail's ``SoftBounce`` does
  the same;
- ``smtpd_delay_reject = yes`` (default) moves client, HELO and sender
  restrictions to RCPT, so these 450s arrive there;
- ``access_map_defer_code = 450`` and ``defer_if_permit``/``defer_if_reject``
  give 450 4.7.1 for policy decisions that are not final.

(https://www.postfix.org/postconf.5.html, those parameters.)  A rule can
still mark its text permanent explicitly ("Retrying will NOT succeed").
TLS, credentials, size and expiry are not in the set: waiting does not fix
them, whatever the code."""


def default_transient(reason: Reason) -> bool | None:
    """The reason's own transience, or ``None`` when the code class decides."""
    return _TABLE[reason][0]


def scope_for(reason: Reason) -> Scope:
    """Who a reply with this reason is about."""
    return _TABLE[reason][2]


def action_for(reason: Reason, transient: bool) -> Action:
    """What to do about ``reason``; a permanent form of a usually transient
    reason (a 552 mailbox full) becomes giving up at the reason's scope."""
    default, action, scope = _TABLE[reason]
    if transient:
        # A usually permanent reason that a rule marks transient (Postfix's
        # "450 4.1.1" for a recipient it cannot verify right now, any 421):
        # giving up becomes retrying; suspending the destination or fixing
        # the configuration still stands (a 421 "TLS required" or Yahoo's
        # [TSS09] 421 are not fixed by waiting alone).
        return Action.RETRY_LATER if action in _GIVE_UP else action
    if default is False:
        return action
    return _PERMANENT_ACTION[scope]
