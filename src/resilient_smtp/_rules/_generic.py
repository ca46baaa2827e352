"""Generic rules: enhanced status codes, basic codes, common reply texts.

Sources: RFC 5321 (§3.1, §3.8, §4.2, §4.5.3.1.10), RFC 3463 and the IANA
enhanced status code registry (RFC 5248, 7372, 7505), RFC 7504, and the reply
texts that Postfix, Exim and Sendmail send (Postfix's anvil and postscreen,
Sendmail's ratecontrol/conncontrol), as collected in
shared/research/classifier-anchors.md.  Rules within a tier are tried in the
order written: the specific before the general.
"""

from __future__ import annotations

from .._rule import Rule, Tier
from .._taxonomy import Reason as R
from .._taxonomy import Stage

__all__ = ["GENERIC_RULES"]

_STATUS = (
    # RFC 7504: 521 "host does not accept mail", 556 "domain does not accept
    # mail" (null MX).  Permanent; checked before the x.3.2 status they carry.
    Rule(R.DOMAIN_UNKNOWN, "521/556: does not accept mail (RFC 7504)", codes=(521, 556),
         tier=Tier.STATUS),
    # A bad address at MAIL FROM is about the sender, whatever the detail.
    Rule(R.SENDER_REJECTED, "x.1.x at MAIL FROM: the sender address", status="x.1.",
         stages=(Stage.MAIL,)),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.1 bad destination mailbox", status="x.1.1"),
    Rule(R.DOMAIN_UNKNOWN, "x.1.2 bad destination system", status="x.1.2"),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.3 bad destination mailbox syntax", status="x.1.3"),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.6 mailbox has moved", status="x.1.6"),
    Rule(R.SENDER_REJECTED, "x.1.7 bad sender mailbox syntax", status="x.1.7"),
    Rule(R.SENDER_REJECTED, "x.1.8 bad sender system address", status="x.1.8"),
    Rule(R.DOMAIN_UNKNOWN, "x.1.10 recipient domain has a null MX (RFC 7505)",
         status="x.1.10"),
    Rule(R.MAILBOX_DISABLED, "5.2.1 mailbox disabled", status="5.2.1"),
    Rule(R.MAILBOX_FULL, "x.2.2 mailbox full", status="x.2.2"),
    Rule(R.MESSAGE_TOO_LARGE, "x.2.3 message length exceeds limit", status="x.2.3"),
    Rule(R.SERVER_BUSY, "x.3.1 mail system full", status="x.3.1"),
    Rule(R.SERVER_BUSY, "4.3.2 system not accepting network messages", status="4.3.2"),
    Rule(R.POLICY_REJECTED, "5.3.2 system not accepting network messages", status="5.3.2"),
    Rule(R.MESSAGE_TOO_LARGE, "x.3.4 message too big for system", status="x.3.4"),
    Rule(R.DOMAIN_UNKNOWN, "5.4.4 unable to route", status="5.4.4"),
    Rule(R.SERVER_BUSY, "x.4.5 mail system congestion", status="x.4.5"),
    Rule(R.EXPIRED, "x.4.7 delivery time expired", status="x.4.7"),
    Rule(R.TOO_MANY_RECIPIENTS, "x.5.3 too many recipients", status="x.5.3"),
    Rule(R.AUTH_CREDENTIALS, "x.7.8 authentication credentials invalid", status="x.7.8"),
    Rule(R.AUTH_CREDENTIALS, "x.7.9 authentication mechanism too weak", status="x.7.9"),
    Rule(R.TLS_REQUIRED, "x.7.10 encryption needed", status="x.7.10"),
    Rule(R.TLS_REQUIRED, "x.7.11 encryption required for requested mechanism",
         status="x.7.11"),
    Rule(R.AUTH_POLICY, "x.7.23 SPF validation failed", status="x.7.23"),
    Rule(R.AUTH_POLICY, "x.7.24 SPF validation error", status="x.7.24"),
    Rule(R.AUTH_POLICY, "x.7.25 reverse DNS validation failed (RFC 7372)", status="x.7.25"),
    Rule(R.AUTH_POLICY, "x.7.26 multiple authentication checks failed (RFC 7372)",
         status="x.7.26"),
    Rule(R.SENDER_REJECTED, "5.7.27 sender address has null MX (RFC 7505)", status="5.7.27"),
    # Gmail's 2023+ deferral for unusual volume of unsolicited mail
    # ("421 4.7.28 ... unusual rate of unsolicited mail ... temporarily rate
    # limited"): a reputation problem, answered by a long back-off.
    Rule(R.REPUTATION_DEFERRAL, "4.7.28 unusual rate of unsolicited mail", status="4.7.28"),
)

_CODE = (
    Rule(R.AUTH_CREDENTIALS, "535 authentication credentials invalid", codes=(535,)),
    Rule(R.AUTH_CREDENTIALS, "534 authentication mechanism too weak", codes=(534,)),
    Rule(R.PROTOCOL_ERROR, "555 MAIL/RCPT parameters not recognised", codes=(555,)),
)

_TEXT = (
    Rule(R.EXPIRED, "text: delivery time expired",
         contains=("queue.expired", "message expired", "delivery time expired",
                   "retry timeout exceeded", "too long in queue")),
    # Providers that say outright that retrying is pointless (Yahoo's TSS09
    # text is the best known); a 421 with this text is not transient.
    Rule(R.BLOCKLISTED, "text: retrying will not succeed",
         contains=("retrying will not succeed", "permanently deferred"), transient=False),
    Rule(R.BLOCKLISTED, "text: listed on a DNS blocklist",
         contains=("spamhaus", "blocklist", "blacklist", "block list", "black list",
                   "dnsbl", "spamcop", "barracuda", "sorbs.net", "abuseat", "blocked using",
                   "client host blocked", "ip blocked", "listed at", "listed on",
                   "banned sending ip", "on our block"),
         ),
    Rule(R.BLOCKLISTED, "text: an RBL", regex=r"\brbl\b"),
    Rule(R.REPUTATION_DEFERRAL, "text: sender reputation",
         contains=("reputation", "temporarily deferred", "user complaints",
                   "unexpected volume")),
    Rule(R.SPAM_CONTENT, "text: content judged as spam or malware",
         contains=("spam", "unsolicited", "junk mail", "virus", "malware", "phishing",
                   "content denied", "content rejected", "suspicious content",
                   "message content", "bulk mail")),
    Rule(R.TLS_REQUIRED, "text: TLS required",
         contains=("starttls", "tls required", "requires tls", "tls is required",
                   "encryption required", "must use tls", "not sent over tls",
                   "tls connection required", "secure connection required")),
    Rule(R.AUTH_POLICY, "text: SPF/DKIM/DMARC, reverse DNS or HELO",
         contains=("spf", "dkim", "dmarc", "sender policy framework", "reverse dns",
                   "reverse lookup", "ptr record", "rdns", "reverse hostname",
                   "cannot find your hostname", "helo command rejected", "helo rejected",
                   "invalid helo", "bad helo", "authentication information",
                   "unauthenticated email", "not pass authentication")),
    Rule(R.AUTH_CREDENTIALS, "text: authentication failed",
         contains=("authentication failed", "authentication unsuccessful",
                   "credentials invalid", "invalid credentials", "username and password",
                   "incorrect authentication", "auth failed", "authentication credentials",
                   "unauthenticated senders", "login failed", "invalid login")),
    Rule(R.RELAY_DENIED, "text: relaying denied",
         contains=("relay access denied", "relaying denied", "relay denied",
                   "relay not permitted", "not permitted to relay", "unable to relay",
                   "we do not relay", "relaying not allowed", "not allowed to relay",
                   "relaying disallowed", "relay prohibited", "authentication required",
                   "not authenticated to send", "must authenticate")),
    Rule(R.RELAY_DENIED, "530 authentication required", codes=(530,), tier=Tier.TEXT),
    Rule(R.SENDING_QUOTA, "text: account sending quota",
         contains=("daily message quota", "sending quota", "sending limit exceeded",
                   "daily sending limit", "credits exceeded", "daily limit",
                   "message quota exceeded", "relay limit exceeded",
                   "quota for sending")),
    Rule(R.MAILBOX_FULL, "text: mailbox full",
         contains=("mailbox full", "mailbox is full", "over quota", "quota exceeded",
                   "exceeded storage", "mailbox size limit", "mailfolder is full",
                   "disk quota", "out of storage", "storage quota", "mailbox has exceeded",
                   "user has exceeded")),
    # Postfix anvil: "450 4.7.1 Error: too many recipients from <client>" is a
    # recipient *rate*, not a per-transaction limit.
    Rule(R.RATE_LIMITED, "text: too many recipients from this client",
         contains=("too many recipients from",)),
    Rule(R.TOO_MANY_CONNECTIONS, "text: too many connections",
         contains=("too many connections", "too many concurrent", "connection limit",
                   "connections limit", "too many open connections",
                   "concurrent connections", "maximum number of connections",
                   "max concurrent connections", "too many sessions",
                   "connection count limit", "too many simultaneous")),
    Rule(R.SESSION_LIMIT, "text: messages per connection",
         contains=("messages per connection", "message per connection",
                   "messages per session", "messages for this session",
                   "messages in this session", "mails per session",
                   "messages on this connection", "per connection reached")),
    Rule(R.TOO_MANY_RECIPIENTS, "text: too many recipients",
         contains=("too many recipients", "recipient limit", "too many rcpt",
                   "maximum number of recipients")),
    Rule(R.GREYLISTED, "text: greylisting",
         contains=("greylist", "graylist", "grey-list", "gray-list", "grey list",
                   "gray list", "postgrey")),
    Rule(R.RATE_LIMITED, "text: rate limit",
         contains=("rate limit", "rate-limit", "ratelimit", "too much mail", "too many messages",
                   "sending too fast", "too fast", "receiving mail at a rate",
                   "receiving mail too quickly", "throttl", "slow down", "exceeded the rate",
                   "rate exceeded", "message rate", "connection rate", "frequency limit",
                   "too many requests", "sending rate")),
    # "421 4.7.0 Try again later": a policy (x.7) status with no other words
    # is how most servers say "you are sending too fast".
    Rule(R.RATE_LIMITED, "text: try again later under a 4.7.x policy status", status="4.7.",
         contains=("try again later", "try later", "retry later", "please try again")),
    Rule(R.SERVER_BUSY, "text: server busy or unavailable",
         contains=("temporary local problem", "temporary system problem",
                   "temporary server error", "temporary failure", "service not available",
                   "service unavailable", "service currently unavailable",
                   "server busy", "system busy", "too busy", "server is busy",
                   "insufficient system storage", "local error in processing",
                   "temporarily unavailable", "maintenance", "overloaded", "high load",
                   "system load", "resources temporarily", "try again later", "try later",
                   "internal error", "server error", "closing connection")),
    Rule(R.CONNECTION_ERROR, "text: timeout or network failure",
         contains=("timeout", "timed out", "connection reset", "connection refused",
                   "lost connection", "connection lost", "dns failure",
                   "dns lookup", "dns query", "name server", "network is unreachable",
                   "no route to host")),
    Rule(R.PROTOCOL_ERROR, "text: protocol or syntax error",
         contains=("too many errors", "syntax error", "bad sequence of commands",
                   "command unrecognized", "unrecognized command", "command not recognized",
                   "protocol violation", "protocol error", "improper use of smtp",
                   "pipelining", "line too long", "too many unauthenticated commands",
                   "command not implemented", "invalid command")),
    Rule(R.DOMAIN_UNKNOWN, "text: domain does not exist",
         contains=("host unknown", "unknown host", "domain not found", "no such domain",
                   "domain does not exist", "unrouteable address", "unroutable",
                   "null mx", "does not accept mail", "domain is not valid",
                   "invalid domain", "unknown domain", "no mx record")),
    Rule(R.RECIPIENT_UNKNOWN, "text: no such recipient",
         contains=("user unknown", "unknown user", "no such user", "mailbox not found",
                   "does not exist", "no mailbox", "recipient not found",
                   "unknown recipient", "invalid recipient", "recipient unknown",
                   "user not found", "no such recipient", "not a valid mailbox",
                   "address unknown", "no such mailbox", "mailbox unavailable",
                   "unknown address", "address not found", "no such account",
                   "invalid mailbox", "mailbox does not", "recipient rejected",
                   "not our customer", "user doesn't exist", "account does not exist")),
    Rule(R.MAILBOX_DISABLED, "text: mailbox disabled",
         contains=("account disabled", "account has been disabled", "mailbox disabled",
                   "mailbox is disabled", "account is disabled", "account inactive",
                   "account is inactive", "mailbox is inactive", "inactive account",
                   "account suspended", "account has been suspended", "deactivated",
                   "account is not active", "mailbox inactive", "disabled account")),
    Rule(R.SENDER_REJECTED, "text: sender rejected",
         contains=("sender address rejected", "sender rejected", "sender verify failed",
                   "sender domain", "not verified", "sender not allowed", "invalid sender",
                   "sender is not", "from address", "envelope sender", "sender denied",
                   "unverified sender", "sender identity")),
    Rule(R.MESSAGE_TOO_LARGE, "text: message too large",
         contains=("too large", "too big", "size exceeds", "exceeds size",
                   "message size", "message length exceeds", "exceeds the maximum size",
                   "message file too big")),
    Rule(R.CONTENT_REJECTED, "text: malformed message",
         contains=("missing from", "invalid from", "rfc 5322", "rfc5322", "rfc 2822",
                   "rfc2822", "rfc 822", "not rfc compliant", "malformed", "multiple from",
                   "duplicate header", "header error", "invalid header", "bare lf",
                   "8-bit", "8bit", "message-id", "improper header", "invalid message")),
    Rule(R.POLICY_REJECTED, "text: rejected by local policy",
         contains=("policy", "not authorized", "not authorised", "access denied",
                   "prohibited", "administrative", "blocked", "refused", "denied",
                   "not allowed", "not permitted", "rejected")),
)

# Weak rules on codes alone: tried only when no text rule matched.
_FALLBACK = (
    # RFC 5321 §4.5.3.1.10: a 552 to RCPT is a "too many recipients" (RFC
    # 821 style) and should be treated as temporary.
    Rule(R.TOO_MANY_RECIPIENTS, "552 at RCPT: too many recipients (RFC 5321 §4.5.3.1.10)",
         codes=(552,), stages=(Stage.RCPT,), transient=True, tier=Tier.FALLBACK),
    # RFC 5321 §3.1: a 554 greeting means "no service for you".
    Rule(R.BLOCKLISTED, "554 greeting: no SMTP service here (RFC 5321 §3.1)", codes=(554,),
         stages=(Stage.CONNECT,), tier=Tier.FALLBACK),
    Rule(R.SENDER_REJECTED, "553 at MAIL FROM: sender address not allowed", codes=(553,),
         stages=(Stage.MAIL,), tier=Tier.FALLBACK),
    Rule(R.RECIPIENT_UNKNOWN, "553 at RCPT: mailbox name not allowed", codes=(553,),
         stages=(Stage.RCPT,), tier=Tier.FALLBACK),
    Rule(R.MESSAGE_TOO_LARGE, "552 after the data: exceeded storage allocation",
         codes=(552,), stages=(Stage.END_OF_DATA,), tier=Tier.FALLBACK),
    Rule(R.PROTOCOL_ERROR, "500-504: command or syntax not accepted",
         codes=(500, 501, 502, 503, 504), tier=Tier.FALLBACK),
    # RFC 5321 §3.8, §4.2.2: 421 "Service not available, closing
    # transmission channel" with no telling text.
    Rule(R.SERVER_BUSY, "421 service not available", codes=(421,), tier=Tier.FALLBACK),
)

GENERIC_RULES: tuple[Rule, ...] = (*_STATUS, *_CODE, *_TEXT, *_FALLBACK)
