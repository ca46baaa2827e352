"""Provider rules: the tokens and texts big mailbox providers document.

These outrank the code class.  A rule with ``hosts`` applies only when the
remote host name ends with one of them (as Sisimai's Rhost modules and
KumoMTA's provider blocks match on MX suffixes); a rule without ``hosts``
matches a token distinctive enough to be safe anywhere (``[TSS04]``,
``S3150``, ``frequency limited``).

Sources (see shared/research/classifier-anchors.md): Gmail's SMTP error
reference (support.google.com/a/answer/3726730), Microsoft 365 NDR reference
(learn.microsoft.com, "Email non-delivery reports and SMTP errors"), Yahoo's
sender hub error codes (senders.yahooinc.com/smtp-error-codes), Amazon SES
SMTP response codes, SendGrid and Mailgun delivery error docs, KumoMTA's
shaping.toml automation rules, and Sisimai's Rhost tables.
"""

from __future__ import annotations

from .._rule import Rule, Tier
from .._taxonomy import Reason as R
from .._taxonomy import Stage

__all__ = ["PROVIDER_RULES"]

P = Tier.PROVIDER

GMAIL = (".google.com", ".googlemail.com", ".gmail.com")
MICROSOFT = (".outlook.com", ".hotmail.com", ".office365.com", ".live.com", ".msn.com")
YAHOO = (".yahoodns.net", ".yahoo.com", ".aol.com", ".yahoo.co.jp")
APPLE = (".icloud.com", ".me.com", ".mac.com", ".apple.com")
SES = (".amazonaws.com", ".amazonses.com")
SENDGRID = (".sendgrid.net", ".sendgrid.com")
MAILGUN = (".mailgun.org", ".mailgun.net")
ZOHO = (".zoho.com", ".zoho.eu", ".zoho.in", ".zohomail.com")
GMX = (".gmx.net", ".gmx.com", ".gmx.de", ".web.de")
COMCAST = (".comcast.net",)
QQ = (".qq.com",)

_GMAIL = (
    # "421 4.7.0 Temporary System Problem.  Try again later": a 4.7 status
    # for a system fault, not a rate limit.
    Rule(R.SERVER_BUSY, "gmail: temporary system problem",
         contains=("temporary system problem",), tier=P),
    Rule(R.RATE_LIMITED, "gmail: recipient receiving mail too quickly (4.2.1)",
         contains=("receiving mail at a rate", "receiving mail too quickly"), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "gmail: unusual rate of unsolicited mail",
         contains=("unusual rate of unsolicited mail",), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "gmail: very low reputation",
         contains=("very low reputation",), tier=P),
    Rule(R.SPAM_CONTENT, "gmail: message likely unsolicited",
         contains=("likely unsolicited mail", "likely suspicious due to"), tier=P),
    # 4.7.27 / 4.7.30 / 4.7.32: "rate limited because SPF / DKIM / alignment
    # didn't pass"; 4.7.29: "not sent over TLS" (Gmail SMTP error reference).
    Rule(R.AUTH_POLICY, "gmail: 4.7.27 SPF did not pass", status="4.7.27", hosts=GMAIL),
    Rule(R.AUTH_POLICY, "gmail: 4.7.30 DKIM did not pass", status="4.7.30", hosts=GMAIL),
    Rule(R.AUTH_POLICY, "gmail: 4.7.32 alignment did not pass", status="4.7.32",
         hosts=GMAIL),
    Rule(R.TLS_REQUIRED, "gmail: 4.7.29 not sent over TLS", status="4.7.29", hosts=GMAIL),
    Rule(R.SENDING_QUOTA, "gmail: daily sending limit (5.4.5)",
         contains=("daily user sending limit", "daily smtp relay limit",
                   "daily sending quota"), tier=P),
    Rule(R.RATE_LIMITED, "gmail: too many login attempts",
         contains=("too many login attempts",), tier=P),
    Rule(R.AUTH_CREDENTIALS, "gmail: application-specific password required",
         contains=("application-specific password required", "please log in with your web"),
         tier=P),
)

_MICROSOFT = (
    Rule(R.BLOCKLISTED, "microsoft: S3150/AS3140 network on block list",
         regex=r"\b(?:s3150|s3140|as\(?3140\)?)\b", tier=P),
    Rule(R.BLOCKLISTED, "microsoft: 5.7.606-649 banned sending IP",
         regex=r"5\.7\.6(?:0[6-9]|[1-4][0-9])\b", tier=P),
    Rule(R.BLOCKLISTED, "microsoft: 5.7.708 traffic not accepted from this IP",
         contains=("5.7.708", "traffic not accepted from this ip"), tier=P),
    Rule(R.POLICY_REJECTED, "microsoft: 5.7.750 unregistered domains",
         contains=("5.7.750", "sending from unregistered domains"), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "microsoft: 4.7.650 rate limited due to IP reputation",
         regex=r"4\.7\.65[0-2]|rate limited due to ip reputation", tier=P),
    Rule(R.SESSION_LIMIT, "microsoft: 4.7.653 messages per connection",
         contains=("4.7.653",), tier=P),
    Rule(R.TOO_MANY_CONNECTIONS, "microsoft: OFR004_104 / IB007 concurrent connections",
         contains=("ofr004_104", "ib007", "exceed max concurrent connections"), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "microsoft: OFR004_105 deferral",
         contains=("ofr004_105",), tier=P),
    Rule(R.RATE_LIMITED, "microsoft: 4.7.500 server busy (S77714)",
         regex=r"4\.7\.5\d\d|\bs77714\b", tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: RecipientNotFound (5.1.10)",
         contains=("recipientnotfound", "resolver.adr.recipnotfound"), tier=P),
    Rule(R.EXPIRED, "microsoft: QUEUE.Expired", contains=("queue.expired",), tier=P),
    Rule(R.AUTH_CREDENTIALS, "microsoft: 5.7.139 SMTP AUTH disabled for the tenant",
         contains=("smtpclientauthentication is disabled",), tier=P),
    Rule(R.RELAY_DENIED, "microsoft: 5.7.57 client not authenticated",
         contains=("5.7.57", "client was not authenticated"), tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: 5.4.1 recipient address rejected: access denied",
         status="5.4.1", contains=("recipient address rejected",), tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: 550 5.5.0 mailbox unavailable",
         status="5.5.0", contains=("mailbox unavailable",), tier=P),
)

_YAHOO = (
    # [TSS09] / [TS03]: "All messages from x will be permanently deferred;
    # Retrying will NOT succeed" - a block, whatever the 421 says.
    Rule(R.BLOCKLISTED, "yahoo: retrying will NOT succeed",
         contains=("retrying will not succeed",), transient=False, tier=P),
    Rule(R.BLOCKLISTED, "yahoo: [BLxx] IP on a block list", regex=r"\[bl\d\d\]", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "yahoo: [TSxx]/[IPTSxx] temporary deferral",
         regex=r"\[(?:ip)?tss?\d\d\]", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "yahoo: [GLxx] temporarily deferred",
         regex=r"\[gl\d\d\]", tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "yahoo: 552 mailbox not found / no such account",
         contains=("mailbox not found", "doesn't have a yahoo", "does not have a yahoo",
                   "doesn't have an aol"),
         hosts=YAHOO),
    Rule(R.RECIPIENT_UNKNOWN, "yahoo: dd ... doesn't have a yahoo.com account",
         contains=("doesn't have a yahoo.com account",), tier=P),
    Rule(R.POLICY_REJECTED, "yahoo: 5.7.9 not accepted for policy reasons",
         contains=("not accepted for policy reasons",), tier=P),
)

_APPLE = (
    Rule(R.POLICY_REJECTED, "icloud: [CS01] rejected due to local policy",
         regex=r"\[cs0\d\]", tier=P),
    Rule(R.SERVER_BUSY, "icloud: [BS02] temporary server error",
         regex=r"\[bs0\d\]", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "icloud: [HCMx]/[HMxx] deferred",
         regex=r"\[hc?m\d+\]", tier=P),
    Rule(R.SERVER_BUSY, "icloud: service unavailable, try again later",
         contains=("service unavailable", "try again later"), hosts=APPLE),
)

_SES = (
    Rule(R.SENDING_QUOTA, "ses: daily message quota exceeded",
         contains=("daily message quota exceeded",), tier=P),
    Rule(R.RATE_LIMITED, "ses: maximum sending rate exceeded",
         contains=("maximum sending rate exceeded",), tier=P),
    Rule(R.SENDER_REJECTED, "ses: email address is not verified",
         contains=("email address is not verified", "identity is not verified",
                   "identities failed the check"), tier=P),
    Rule(R.AUTH_CREDENTIALS, "ses: sending paused or suspended for the account",
         contains=("sending paused", "sending suspended", "account is suspended"),
         hosts=SES),
    Rule(R.SERVER_BUSY, "ses: temporary service failure",
         contains=("temporary service failure",), hosts=SES),
)

_SENDGRID = (
    Rule(R.SENDING_QUOTA, "sendgrid: maximum credits exceeded",
         contains=("maximum credits exceeded",), tier=P),
    Rule(R.SENDER_REJECTED, "sendgrid: from address is not a verified sender identity",
         contains=("verified sender identity",), tier=P),
    Rule(R.AUTH_CREDENTIALS, "sendgrid: unauthenticated senders not allowed",
         contains=("unauthenticated senders not allowed",), hosts=SENDGRID),
)

_MAILGUN = (
    Rule(R.RELAY_DENIED, "mailgun: sandbox domains are for test purposes",
         contains=("sandbox subdomains are for test purposes", "free accounts are for test"),
         tier=P),
    Rule(R.AUTH_CREDENTIALS, "mailgun: account not activated or disabled",
         contains=("activate your mailgun account", "account is disabled"), hosts=MAILGUN),
)

_ZOHO = (
    # "550 5.4.6 Unusual sending activity detected. Please try after sometime."
    Rule(R.RATE_LIMITED, "zoho: unusual sending activity (a 5xx rate limit)",
         contains=("unusual sending activity",), transient=True, tier=P),
    Rule(R.SENDER_REJECTED, "zoho: outgoing blocked",
         contains=("outgoing blocked",), tier=P),
)

_GMX = (
    Rule(R.REPUTATION_DEFERRAL, "gmx: reject due to policy restrictions",
         contains=("reject due to policy restrictions",), transient=True, hosts=GMX),
    Rule(R.BLOCKLISTED, "gmx: reject due to policy violations",
         contains=("reject due to policy violations",), hosts=GMX),
    # GMX answers "501 Syntax error in parameters or arguments" when it
    # refuses the sender's configuration.
    Rule(R.POLICY_REJECTED, "gmx: 501 syntax error (configuration refused)", codes=(501,),
         hosts=GMX),
)

_COMCAST = (
    Rule(R.RATE_LIMITED, "comcast: RLxxxxxx rate limit", regex=r"\brl\d{4,6}\b", tier=P),
    Rule(R.BLOCKLISTED, "comcast: BLxxxxxx block list", regex=r"\bbl\d{6}\b", tier=P),
    Rule(R.AUTH_POLICY, "comcast: PTRxxx reverse DNS", regex=r"\bptr\d{3}\b", tier=P),
    Rule(R.BLOCKLISTED, "cox: AUP#... blocked", contains=("aup#",), tier=P),
)

_QQ = (
    # "550 Ip frequency limited", "550 Sender frequency limited",
    # "550 Connection frequency limited", "550 Domain frequency limited":
    # 5xx replies that mean "slow down" (KumoMTA suspends, then retries).
    Rule(R.RATE_LIMITED, "qq: frequency limited (a 5xx rate limit)",
         contains=("frequency limited",), transient=True, tier=P),
    Rule(R.SPAM_CONTENT, "qq: mail content denied", contains=("mail content denied",),
         tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "qq: mailbox unavailable or access denied",
         contains=("mailbox unavailable or access denied", "mailbox not found"), hosts=QQ),
)

_OTHERS = (
    Rule(R.TOO_MANY_CONNECTIONS, "orange: trop de connexions",
         contains=("trop de connexions",), tier=P),
    Rule(R.BLOCKLISTED, "orange: service refuse", contains=("service refuse",), tier=P),
    Rule(R.SERVER_BUSY, "mimecast: internal resource temporarily unavailable",
         contains=("internal resource temporarily unavailable",), tier=P),
    Rule(R.SESSION_LIMIT, "yahoo/netvigator: max messages per connection/session",
         contains=("max message per connection", "too many messages for this session"),
         tier=P),
)

# Stage-aware provider rules: GMX and Apple answer the greeting this way.
_GREETING = (
    Rule(R.BLOCKLISTED, "554 greeting with an IP block text", codes=(554,),
         stages=(Stage.CONNECT,), contains=("ip", "blocked", "listed"), hosts=GMX + APPLE),
)

PROVIDER_RULES: tuple[Rule, ...] = (
    *_GMAIL, *_MICROSOFT, *_YAHOO, *_APPLE, *_SES, *_SENDGRID, *_MAILGUN, *_ZOHO, *_GMX,
    *_COMCAST, *_QQ, *_OTHERS, *_GREETING,
)
