"""Provider rules: the tokens and texts big mailbox providers document.

These outrank the code class.  A rule with ``hosts`` applies only when the
remote host name ends with one of them (as Sisimai's Rhost modules and
KumoMTA's provider blocks match on MX suffixes); a rule without ``hosts``
matches a token distinctive enough to be safe anywhere (``[TSS04]``,
``S3150``, ``frequency limited``).  The tables are aligned by hand
(``# fmt: off``).

The texts come from each provider's own error reference, cited above its
block; where a provider documents a reply but not what to do about it, the
follow-up comes from KumoMTA's shaping rules (``assets/policy-extras`` and
``assets/community/shaping.toml`` in https://github.com/KumoCorp/kumomta).

Reply.parse takes the leading enhanced status off the text, so a rule keyed
on a status such as 4.7.650 uses ``status=``, never ``contains=``.
"""

from __future__ import annotations

from resilient_smtp._classify.rule import Rule, Tier
from resilient_smtp._classify.taxonomy import Reason as R
from resilient_smtp._classify.taxonomy import Stage

__all__ = ["PROVIDER_RULES"]

P = Tier.PROVIDER

# MX (and relay) host name suffixes.
GMAIL = (".google.com", ".googlemail.com", ".gmail.com")
GMAIL_SUBMISSION = ("smtp.gmail.com", "smtp-relay.gmail.com")
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

# Permanent reply codes a provider uses for blocks and rejections; a rule
# that must tell a 5xx block from a 4xx deferral of the same text uses them.
_REJECT = (550, 552, 553, 554)
_DEFER = (421, 450, 451, 452)

# fmt: off
# Before every provider's SPF/DKIM/DMARC words: a 4xx that says the check
# itself failed for a passing reason is a DNS time-out on the server's side,
# not a verdict on us: Yahoo "451 4.7.5 Temporary error evaluating DMARC
# policy" (senders.yahooinc.com/smtp-error-codes), Cisco Secure Email "451
# #4.4.3 Temporary error occurred during SPF verification." (AsyncOS user
# guide), SPF "temperror" (RFC 7208 §2.6.6).
_TEMPERROR = (
    Rule(R.SERVER_BUSY, "text: a check failed temporarily (4xx), not a verdict",
         contains=("temporary error evaluating", "temporary error occurred during", "temperror"),
         codes=(421, 450, 451, 452, 454), tier=P),
    # Haraka's spf plugin: "450 sender <x> SPF Temporary Error"
    # (haraka-plugin-spf/index.js); the same shape for DKIM/DMARC.
    Rule(R.SERVER_BUSY, "text: an SPF/DKIM/DMARC temporary error (4xx), not a verdict",
         contains=("spf", "dkim", "dmarc"),
         regex=r"\b(?:spf|dkim|dmarc)\b.{0,30}\btemp(?:orary|\.)? ?(?:error|failure)\b"
               # Rackspace "450 4.4.0 <x> Temporary DMARC DNS lookup failure (G1E)"
               # (smtp.codes/rackspace).
               r"|\btemp(?:orary|\.)? (?:spf|dkim|dmarc)\b",
         codes=(421, 450, 451, 452, 454), tier=P),
)

# Gmail: Google Workspace Admin Help, "SMTP error reference"
# (support.google.com/a/answer/3726730).
_GMAIL = (
    # "421 4.3.0 Temporary System Problem.  Try again later." (also under
    # 4.7.0 and 454 4.7.0 "Cannot authenticate due to temporary system
    # problem"): a system fault, not a rate limit, whatever the status says.
    Rule(R.SERVER_BUSY, "gmail: temporary system problem",
         contains=("temporary system problem", "mail server temporarily rejected message"),
         tier=P),
    # "450 4.2.1 / 550 5.2.1 The user you are trying to contact is receiving
    # mail at a rate that prevents additional messages from being delivered."
    Rule(R.RATE_LIMITED, "gmail: recipient receiving mail too quickly (4.2.1)",
         contains=("receiving mail at a rate", "receiving mail too quickly"), transient=True,
         tier=P),
    # "550 5.7.1 / 5.7.28 Our system has detected an unusual rate of
    # unsolicited mail originating from your IP address ... has been
    # blocked" is a block; the 421 4.7.28 of the same words is a deferral.
    Rule(R.BLOCKLISTED, "gmail: unusual rate of unsolicited mail, blocked (5xx)",
         contains=("unusual rate of unsolicited mail", "very low reputation"), codes=_REJECT,
         tier=P),
    Rule(R.REPUTATION_DEFERRAL, "gmail: unusual rate of unsolicited mail",
         contains=("unusual rate of unsolicited mail", "very low reputation"), tier=P),
    # "421 4.7.0 ... this message is suspicious" defers; "550 5.7.1 ... likely
    # unsolicited mail ... has been blocked" rejects.
    Rule(R.SPAM_CONTENT, "gmail: message likely unsolicited or suspicious, deferred",
         contains=("likely unsolicited mail", "likely suspicious due to"), codes=_DEFER,
         transient=True, tier=P),
    Rule(R.SPAM_CONTENT, "gmail: message likely unsolicited",
         contains=("likely unsolicited mail", "likely suspicious due to",
                   "content presents a potential security issue", "illegal attachment"),
         tier=P),
    # Gmail ends many rejections with "To best protect our users from spam
    # (and phishing), the message has been blocked."; the cause comes first:
    # "550 5.7.26 The MAIL FROM domain [d] has an SPF record with a hard fail
    # policy (-all) but it fails to pass SPF checks", "550 5.7.26 This
    # message does not have authentication information or fails to pass
    # authentication checks", "550 5.7.1 This message is not RFC 5322
    # compliant", "550 5.7.1 Messages with multiple addresses in From:
    # header are not accepted".
    Rule(R.AUTH_POLICY, "gmail: SPF/DKIM/DMARC checks failed",
         contains=("fails to pass spf checks", "does not have authentication information",
                   "fails to pass authentication checks", "unauthenticated email from",
                   "dmarc policy"),
         tier=P),
    Rule(R.CONTENT_REJECTED, "gmail: not RFC 5322 compliant",
         contains=("not rfc 5322 compliant", "multiple addresses in from: header"), tier=P),
    # 4.7.27 / 4.7.30 / 4.7.32 "Your email has been rate limited because SPF
    # / DKIM authentication didn't pass / the From: header isn't aligned";
    # 4.7.29 "... because this message wasn't sent over a TLS connection".
    # Gmail's meanings differ from IANA's (x.7.27 null MX, x.7.29 ARC,
    # x.7.30 REQUIRETLS), so they are keyed on Gmail's words and hosts.
    Rule(R.TLS_REQUIRED, "gmail: not sent over a TLS connection",
         contains=("sent over a tls connection", "not sent over tls"), tier=P),
    Rule(R.AUTH_POLICY, "gmail: SPF/DKIM did not pass or From: not aligned",
         contains=("authentication didn't pass", "authentication did not pass",
                   "isn't aligned with either"),
         tier=P),
    Rule(R.AUTH_POLICY, "gmail: x.7.27 SPF did not pass", status="x.7.27", hosts=GMAIL),
    Rule(R.AUTH_POLICY, "gmail: x.7.30 DKIM did not pass", status="x.7.30", hosts=GMAIL),
    Rule(R.AUTH_POLICY, "gmail: x.7.32 From: not aligned", status="x.7.32", hosts=GMAIL),
    Rule(R.TLS_REQUIRED, "gmail: x.7.29 not sent over TLS", status="x.7.29", hosts=GMAIL),
    # "550 5.4.5 Daily user sending limit exceeded", "550 5.4.5 Daily sending
    # quota exceeded", "550 5.7.1 Daily SMTP relay limit exceeded for
    # customer", "450 4.2.1 Peak SMTP relay limit exceeded for customer".
    Rule(R.SENDING_QUOTA, "gmail: daily sending limit",
         contains=("daily user sending limit", "daily smtp relay limit",
                   "daily sending quota"),
         tier=P),
    # "Peak" is a short-term rate, not the daily quota: slow down.
    Rule(R.RATE_LIMITED, "gmail: 450 4.2.1 peak SMTP relay limit",
         contains=("peak smtp relay limit",), tier=P),
    # "550 5.7.1 Email quota exceeded" is our quota when Google's submission
    # or relay host says it; from the MX (gmail-smtp-in) it is the
    # recipient's mailbox, which the generic "quota exceeded" words call full.
    Rule(R.SENDING_QUOTA, "gmail: 550 5.7.1 email quota exceeded (SMTP relay)",
         contains=("email quota exceeded",), hosts=GMAIL_SUBMISSION),
    # "550 5.7.1 Invalid credentials for relay": the SMTP relay service is
    # not set up for this sender.
    Rule(R.RELAY_DENIED, "gmail: SMTP relay not set up for this sender",
         contains=("invalid credentials for relay",), tier=P),
    # "421 4.7.0 IP not in whitelist for RCPT domain, closing connection": the
    # recipient domain accepts mail only from the IPs it lists ("check if
    # your IP address is allowed to send emails to the receiver"): its policy.
    Rule(R.POLICY_REJECTED, "gmail: IP not in the recipient domain's allowlist",
         contains=("not in whitelist for rcpt domain",), tier=P),
    # "550 5.7.1 The IP you're using to send mail is not authorized to send
    # email directly to our servers. Please use the SMTP relay at your
    # service provider instead."
    Rule(R.BLOCKLISTED, "gmail: IP not authorized to send directly",
         contains=("not authorized to send email directly to our servers",), tier=P),
    Rule(R.RATE_LIMITED, "gmail: too many login attempts",
         contains=("too many login attempts",), tier=P),
    # "534 5.7.9 Application-specific password required", "534 5.7.14
    # Please log in with your web browser and then try again."
    Rule(R.AUTH_CREDENTIALS, "gmail: application-specific password or web login required",
         contains=("application-specific password required", "please log in with your web"),
         tier=P),
    # "550 5.2.1 The email account that you tried to reach is disabled." and
    # "... is inactive" (the text also arrives without its status).
    Rule(R.MAILBOX_DISABLED, "gmail: account you tried to reach is disabled",
         contains=("tried to reach is disabled", "tried to reach is inactive"), tier=P),
    # "550 5.7.1 Messages missing a valid messageId header are not accepted."
    Rule(R.CONTENT_REJECTED, "gmail: missing Message-ID header",
         contains=("valid messageid header",), tier=P),
    # "454 4.5.0 SMTP protocol violation, no commands allowed to pipeline
    # after STARTTLS", "454 5.5.1 STARTTLS may not be repeated": protocol
    # errors that mention STARTTLS, not a demand for TLS.
    # "550 5.7.0 Mail Sending denied. This error occurs if the sender account
    # is disabled or not registered within your Google Workspace domain."
    Rule(R.SENDER_REJECTED, "gmail: mail sending denied (sender account)",
         contains=("mail sending denied",), tier=P),
    Rule(R.PROTOCOL_ERROR, "gmail: STARTTLS protocol violation",
         contains=("pipeline after starttls", "starttls may not be repeated"), tier=P),
)

# Microsoft 365 / Outlook.com: Exchange Online "Email non-delivery reports
# and SMTP errors" and the pages for 451 4.7.500-699 (ASxxx), 550
# 5.7.606-649, 5.7.705-750 and 550 5.7.511 (learn.microsoft.com); Outlook.com
# postmaster error codes (sendersupport.olc.protection.outlook.com/pm).
_MICROSOFT = (
    # "550 5.7.1 Unfortunately, messages from [ip] weren't sent. Please
    # contact your Internet service provider since part of their network is
    # on our block list (S3150)."
    Rule(R.BLOCKLISTED, "microsoft: S3150/AS3140 network on block list",
         regex=r"\b(?:s3150|s3140|as\(?3140\)?)\b", tier=P),
    # "550 5.7.606-649 Access denied, banned sending IP [ip]" and "550
    # 5.7.511 Access denied, banned sender[ip]".
    Rule(R.BLOCKLISTED, "microsoft: 5.7.606-649 / 5.7.511 banned sending IP",
         contains=("banned sending ip", "banned sender"), tier=P),
    Rule(R.BLOCKLISTED, "microsoft: 5.7.708 traffic not accepted from this IP",
         contains=("traffic not accepted from this ip",), tier=P),
    # "550 5.7.513 Service unavailable, Client host [ip] blocked by <domain>
    # using Customer Block list".
    # The recipient organisation's own IP block list (its connection
    # filter), not Microsoft's: a policy of that recipient, like Mimecast's
    # Blocked Senders (see "the recipient's own block list" in generic.py).
    Rule(R.POLICY_REJECTED, "microsoft: 5.7.513 customer block list",
         contains=("customer block list",), tier=P),
    # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and SMTP errors in
    # Exchange Online"): "550 5.2.1 Content Filter agent quarantined this message" is a spam
    # verdict under a "mailbox" status; "550 5.3.2 STOREDRV.Deliver: Missing or bad StoreDriver MDB
    # properties" a fault in the recipient's mailbox database (not RFC 3463's "not accepting
    # messages"); "550 5.3.190 Journaling on-premises messages to Microsoft 365 ... not supported"
    # a tenant setting.
    Rule(R.SPAM_CONTENT, "microsoft: content filter agent quarantined the message",
         contains=("content filter agent", "quarantined this message"), tier=P),
    Rule(R.POLICY_REJECTED, "microsoft: 5.3.190 journaling not supported",
         contains=("journaling",), status="5.3.190", tier=P),
    # "550 5.7.750 Service unavailable. Client blocked from sending from
    # unregistered domains.": the sender's domain is not one of the tenant's
    # accepted domains; fix the sender identity.
    # (learn.microsoft.com/en-us/exchange/mail-flow-best-practices/
    # non-delivery-reports-in-exchange-online/fix-error-code-5-7-700-through-5-7-750)
    Rule(R.SENDER_REJECTED, "microsoft: 5.7.750 unregistered domains",
         contains=("sending from unregistered domains",), tier=P),
    # "550 5.7.705 Access denied, tenant has exceeded threshold": the relay
    # refuses everything from a tenant that sent too much spam (same page),
    # like an IP block: stop sending through it.
    Rule(R.BLOCKLISTED, "microsoft: 5.7.70x tenant has exceeded threshold",
         contains=("tenant has exceeded threshold",), tier=P),
    # "550 5.7.501/502/503 Access denied, spam abuse detected. The sending
    # account has been banned due to detected spam activity." (Exchange
    # Online NDR list): our account may not send; not a verdict on content.
    Rule(R.SENDER_REJECTED, "microsoft: 5.7.501-503 sending account banned",
         contains=("sending account has been banned",), tier=P),
    # Recipient restrictions: "550 5.7.1 RESOLVER.RST.AuthRequired;
    # authentication required", "5.7.133 RESOLVER.RST.SenderNotAuthenticated
    # ForGroup", "5.7.134 ...ForMailbox", "RESOLVER.RST.NotAuthorized": the
    # recipient takes mail from internal senders only.  Not a relay refusal,
    # whatever "authentication required" says.
    # (learn.microsoft.com/en-us/exchange/mail-flow-best-practices/
    # non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online)
    # ... but "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for
    # this recipient" and "RESOLVER.RST.SendSizeLimit.Sender" are size limits.
    Rule(R.MESSAGE_TOO_LARGE, "microsoft: RESOLVER.RST size limit",
         contains=("resolver.rst.recipsizelimit", "resolver.rst.sendsizelimit"), tier=P),
    Rule(R.POLICY_REJECTED, "microsoft: RESOLVER.RST recipient restriction",
         contains=("resolver.rst.",), tier=P),
    # "432 4.3.2 STOREDRV.Deliver; recipient thread limit exceeded": too many
    # deliveries at once to one mailbox; comes back by itself (same page).
    Rule(R.RATE_LIMITED, "microsoft: 4.3.2 STOREDRV recipient thread limit",
         contains=("recipient thread limit",), tier=P),
    # Any other STOREDRV reply under a x.3 status is the mailbox database's
    # fault ("550 5.3.2 STOREDRV.Deliver: Missing or bad StoreDriver MDB
    # properties", NDR list); a 5xx keeps its class.
    Rule(R.SERVER_BUSY, "microsoft: STOREDRV fault in the mailbox database (5xx)",
         contains=("storedrv", "storedriver"), status="5.3.", transient=False, tier=P),
    Rule(R.SERVER_BUSY, "microsoft: STOREDRV fault in the mailbox database (x.3.x)",
         contains=("storedrv", "storedriver"), status="x.3.", tier=P),
    # "550 5.4.310 DNS domain <d> does not exist" (same page).
    Rule(R.DOMAIN_UNKNOWN, "microsoft: 5.4.310 DNS domain does not exist", status="5.4.310",
         tier=P),
    # "554 5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; ...":
    # the outbound filter judged the message spam (same page).
    Rule(R.SPAM_CONTENT, "microsoft: OutboundSpamException",
         contains=("outboundspamexception",), tier=P),
    # "451 4.7.650 The mail server [ip] has been temporarily rate limited due
    # to IP reputation."  4.7.651 and 4.7.652 are the same family.
    Rule(R.REPUTATION_DEFERRAL, "microsoft: 4.7.650 rate limited due to IP reputation",
         contains=("rate limited due to ip reputation",), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "microsoft: 4.7.650 IP reputation deferral",
         status="4.7.650", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "microsoft: 4.7.651 IP reputation deferral",
         status="4.7.651", tier=P),
    # "451 4.7.652 The mail server [ip] has exceeded the maximum number of
    # connections. (S3115)": a connection count, not reputation (quoted in
    # suped.com's "How to fix Hotmail error 451 4.7.652"; KumoMTA sets the
    # Outlook connection limit to 1 on "exceeded the maximum number of
    # connections").
    Rule(R.TOO_MANY_CONNECTIONS, "microsoft: 4.7.652 maximum number of connections",
         status="4.7.652", tier=P),
    Rule(R.SESSION_LIMIT, "microsoft: 4.7.653 messages per connection", status="4.7.653",
         tier=P),
    # Outlook.com "451 4.7.500 Server busy. Please try again later from
    # [ip]. (S77714)": too fast (KumoMTA slows the default path to 1/min).
    Rule(R.RATE_LIMITED, "microsoft: 4.7.500 server busy (S77714)",
         regex=r"\bs77714\b|server busy\. please try again later from", tier=P),
    # "451 4.7.500-699 Access denied, please try again later. (ASxxx)":
    # Exchange Online holds back an IP it finds suspicious while it watches
    # it (KumoMTA suspends the path for an hour).
    Rule(R.REPUTATION_DEFERRAL, "microsoft: 4.7.500-699 access denied, try again later",
         contains=("access denied, please try again later",), tier=P),
    # "... exceed max concurrent connections. IB007" (KumoMTA sets the
    # connection limit to 1 for Outlook on it).
    Rule(R.TOO_MANY_CONNECTIONS, "microsoft: IB007 concurrent connections",
         contains=("ib007", "exceed max concurrent connections"), tier=P),
    # "5.2.121/5.2.122 ... per hour message receive limit ... exceeded": the
    # recipient gets too much mail; retry later.
    Rule(R.RATE_LIMITED, "microsoft: 5.2.121/5.2.122 recipient's hourly receive limit",
         contains=("message receive limit",), transient=True, tier=P),
    # "550 5.2.2 Submission quota exceeded" / "STOREDRV.Submission.Exception:
    # SubmissionQuotaExceededException": our mailbox's sending limit, not a
    # full mailbox (whatever x.2.2 means elsewhere).
    Rule(R.SENDING_QUOTA, "microsoft: submission quota exceeded",
         contains=("submission quota exceeded", "submissionquotaexceeded"), tier=P),
    # "STOREDRV.Submission.Exception:SendAsDeniedException", "5.7.60 SMTP;
    # Client does not have permissions to send as this sender".
    Rule(R.SENDER_REJECTED, "microsoft: SendAsDenied",
         contains=("sendasdenied", "does not have permissions to send as this sender"),
         tier=P),
    # "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP
    # address lookup" (not IANA's x.1.10 null MX).
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: RecipientNotFound (5.1.10)",
         contains=("recipientnotfound", "recipnotfound"), tier=P),
    Rule(R.EXPIRED, "microsoft: QUEUE.Expired", contains=("queue.expired",), tier=P),
    # "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is
    # disabled for the Tenant."
    Rule(R.AUTH_CREDENTIALS, "microsoft: 5.7.139 SMTP AUTH disabled for the tenant",
         contains=("smtpclientauthentication is disabled",), tier=P),
    # "530 5.7.57 Client not authenticated to send mail."
    Rule(R.RELAY_DENIED, "microsoft: 5.7.57 (status) client not authenticated",
         status="5.7.57", tier=P),
    Rule(R.RELAY_DENIED, "microsoft: 5.7.57 client not authenticated",
         contains=("client was not authenticated",), tier=P),
    # "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update
    # your client to support TLS 1.2."
    Rule(R.TLS_REQUIRED, "microsoft: 4.7.66 TLS 1.0/1.1 not supported",
         contains=("tls 1.0 and 1.1 are not supported",), tier=P),
    # "550 5.4.1 Recipient address rejected: Access denied" (directory-based
    # edge blocking) and "550 5.5.0 Requested action not taken: mailbox
    # unavailable" (KumoMTA's bounce classifier: InvalidRecipient).
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: 5.4.1 recipient address rejected: access denied",
         status="5.4.1", contains=("recipient address rejected",), tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "microsoft: 550 5.5.0 mailbox unavailable",
         status="5.5.0", contains=("mailbox unavailable",), tier=P),
    # "550 5.7.12 Sender was not authenticated by organization": the
    # recipient takes mail from inside its organisation only (NDR list).
    Rule(R.POLICY_REJECTED, "microsoft: 5.7.12 sender not authenticated by organization",
         contains=("not authenticated by organization",), tier=P),
    # Outlook.com's older codes (postmaster troubleshooting page): "421 RP-001
    # ... We have limits for how many messages can be sent per hour and per
    # day" (RP-001..003, a rate); "550 SC-001 ... on our block list", "550
    # SC-004 ... A block has been placed against your IP address", "550
    # DY-001/DY-002 ... dynamic IP's / compromised server": IP blocks.
    Rule(R.RATE_LIMITED, "outlook.com: RP-00x hourly/daily limits", regex=r"\brp-00[1-3]\b",
         tier=P),
    Rule(R.BLOCKLISTED, "outlook.com: SC-001/SC-004/DY-00x IP blocks",
         regex=r"\b(?:sc-00[14]|dy-00[12])\b", tier=P),
)

# Yahoo / AOL: Yahoo Sender Hub, "SMTP error codes"
# (senders.yahooinc.com/smtp-error-codes).
_YAHOO = (
    # "421 4.7.0 [TSS09] All messages from [ip] will be permanently
    # deferred; Retrying will NOT succeed." ([TS03] and 553 5.7.2 [TSS11]
    # say the same): a block, whatever the 421 says.
    Rule(R.BLOCKLISTED, "yahoo: retrying will NOT succeed",
         contains=("retrying will not succeed",), transient=False, tier=P),
    # "553 5.7.1 [BL21] Connections will not be accepted from [ip], because
    # the ip is in Spamhaus's list".
    Rule(R.BLOCKLISTED, "yahoo: [BLxx] IP on a block list", regex=r"\[bl\d\d\]", tier=P),
    # (The regexes are written with a literal such as "[ts" up front, so the
    # rule index can gate them cheaply.)
    # "421 4.7.0 [TSS04] Messages from [ip] temporarily deferred due to
    # unexpected volume or user complaints - 4.16.55.1" (KumoMTA suspends
    # for 2 hours); [TS01], [TS02], [IPTS04] and [GLxx] are the same kind.
    Rule(R.REPUTATION_DEFERRAL, "yahoo: [TSxx]/[IPTSxx] temporary deferral",
         regex=r"\[tss?\d\d\]|\[ipts\d\d\]", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "yahoo: [GLxx] temporarily deferred",
         regex=r"\[gl\d\d\]", tier=P),
    Rule(R.REPUTATION_DEFERRAL, "yahoo: 4.16.5x deferral code",
         regex=r"\b4\.16\.5\d", tier=P),
    # "421 Max message per connection reached, closing transmission channel"
    # (KumoMTA caps deliveries per connection for Yahoo).
    Rule(R.SESSION_LIMIT, "yahoo: max message per connection reached",
         contains=("max message per connection",), tier=P),
    # "451 Message temporarily deferred due to unresolvable RFC.5321 from
    # domain": the sender's domain does not resolve (yet).
    Rule(R.SENDER_REJECTED, "yahoo: unresolvable RFC 5321 from domain",
         contains=("unresolvable rfc.5321 from domain", "unresolvable rfc5321 from domain"),
         tier=P),
    # "552 1 Requested mail action aborted, mailbox not found" (a 552 for an
    # unknown user; KumoMTA's bounce classifier says InvalidRecipient).
    Rule(R.RECIPIENT_UNKNOWN, "yahoo: 552 mailbox not found / no such account",
         contains=("mailbox not found", "doesn't have a yahoo", "does not have a yahoo",
                   "doesn't have an aol"),
         hosts=YAHOO),
    Rule(R.RECIPIENT_UNKNOWN, "yahoo: dd ... doesn't have a yahoo.com account",
         contains=("doesn't have a yahoo.com account",), tier=P),
    # "554 5.7.9 Message not accepted for policy reasons."
    Rule(R.POLICY_REJECTED, "yahoo: 5.7.9 not accepted for policy reasons",
         contains=("not accepted for policy reasons",), tier=P),
)

# AOL's legacy postmaster codes (postmaster.info.aol.com/errors/...), still
# sent by AOL's MXes before Yahoo's: "554 5.7.1 : (RLY:B1) <url>" and "(RTR:BB)"
# are IP blocks, "421 4.7.1 : (DYN:T1) <url>", "(RLY:CH)" temporary deferrals
# for volume, complaints or dynamic space.  The code class tells them apart.
_AOL = (
    Rule(R.BLOCKLISTED, "aol: postmaster.info.aol.com code, refused (5xx)",
         contains=("postmaster.info.aol.com",), codes=_REJECT, tier=P),
    Rule(R.REPUTATION_DEFERRAL, "aol: postmaster.info.aol.com code, deferred (4xx)",
         contains=("postmaster.info.aol.com",), codes=_DEFER, tier=P),
)

# Apple iCloud: "Postmaster information for iCloud Mail"
# (support.apple.com/102322) and KumoMTA's Apple automation rules.
_APPLE = (
    # "554 5.7.1 [CS01] Message rejected due to local policy"; the [HMxx]
    # codes are rejections when they come with a 5xx.
    Rule(R.POLICY_REJECTED, "icloud: [CSxx]/[HMxx] rejected due to local policy",
         regex=r"\[cs\d+\]|\[hm\d+\]", codes=_REJECT, tier=P),
    Rule(R.POLICY_REJECTED, "icloud: [CSxx] rejected due to local policy",
         regex=r"\[cs0\d\]", tier=P),
    # "[BS02] Temporary server error." (KumoMTA suspends 15 minutes)
    Rule(R.SERVER_BUSY, "icloud: [BSxx] temporary server error", regex=r"\[bs0\d\]", tier=P),
    # "421 ... [HCM1] ... deferred" (KumoMTA suspends 15 minutes)
    Rule(R.REPUTATION_DEFERRAL, "icloud: [HCMx]/[HMxx] deferred",
         regex=r"\[hc?m\d+\]", tier=P),
    # "421 4.7.1 Messages to <x> deferred due to excessive volume. Try again
    # later" is the recipient receiving too fast (smtp.codes/icloud); "550
    # 5.7.1 Relay not permitted for user." is a Hide My Email address its
    # owner switched off (tamingdns.com/bounce-decoder/apple): the address
    # no longer takes mail, whatever "relay" says.
    Rule(R.RATE_LIMITED, "icloud: deferred due to excessive volume",
         contains=("excessive volume",), hosts=APPLE),
    Rule(R.MAILBOX_DISABLED, "icloud: Hide My Email address switched off",
         contains=("relay not permitted for user",), hosts=APPLE),
    Rule(R.SERVER_BUSY, "icloud: service unavailable, try again later",
         contains=("service unavailable", "try again later"), hosts=APPLE),
)

# Amazon SES: "SMTP issues with Amazon SES" / "SMTP response codes returned
# by Amazon SES" (docs.aws.amazon.com/ses/latest/dg/troubleshoot-smtp.html).
_SES = (
    Rule(R.SENDING_QUOTA, "ses: 454 Throttling failure: daily message quota exceeded",
         contains=("daily message quota exceeded",), tier=P),
    Rule(R.RATE_LIMITED, "ses: 454 Throttling failure: maximum sending rate exceeded",
         contains=("maximum sending rate exceeded",), tier=P),
    Rule(R.SENDER_REJECTED, "ses: 554 Message rejected: email address is not verified",
         contains=("email address is not verified", "identity is not verified",
                   "identities failed the check"),
         tier=P),
    # "554 Account is paused" / "Sending paused for this account" / "Sending
    # suspended for this account": a human must act on the account.
    Rule(R.AUTH_CREDENTIALS, "ses: sending paused or suspended for the account",
         contains=("sending paused", "sending suspended", "account is suspended",
                   "account is paused"),
         hosts=SES),
    # "554 Access denied: User ... is not authorized to perform
    # ses:SendRawEmail": the SMTP credentials lack the permission.
    Rule(R.AUTH_CREDENTIALS, "ses: credentials not authorized to send",
         contains=("is not authorized to perform",), hosts=SES),
    Rule(R.MESSAGE_TOO_LARGE, "ses: 552 message length is more than the limit",
         contains=("message length is more than",), hosts=SES),
    Rule(R.SERVER_BUSY, "ses: 454 temporary service failure",
         contains=("temporary service failure",), hosts=SES),
)

# SendGrid: "SMTP Errors and Troubleshooting" (docs.sendgrid.com /
# twilio.com/docs/sendgrid).
_SENDGRID = (
    # "451 Authentication failed: Maximum credits exceeded"
    Rule(R.SENDING_QUOTA, "sendgrid: maximum credits exceeded",
         contains=("maximum credits exceeded",), tier=P),
    # "550 The from address does not match a verified Sender Identity."
    Rule(R.SENDER_REJECTED, "sendgrid: from address is not a verified sender identity",
         contains=("verified sender identity",), tier=P),
    Rule(R.AUTH_CREDENTIALS, "sendgrid: 550 unauthenticated senders not allowed",
         contains=("unauthenticated senders not allowed",), hosts=SENDGRID),
)

# Mailgun: "Sending errors" (documentation.mailgun.com, help.mailgun.com).
_MAILGUN = (
    # "421 Domain ... is not allowed to send: Sandbox subdomains are for test
    # purposes only. Please add your own domain or add the address to
    # authorized recipients in Account Settings."
    Rule(R.RELAY_DENIED, "mailgun: sandbox domains are for test purposes",
         contains=("sandbox subdomains are for test purposes", "free accounts are for test"),
         tier=P),
    Rule(R.AUTH_CREDENTIALS, "mailgun: account not activated or disabled",
         contains=("activate your mailgun account", "account is disabled"), hosts=MAILGUN),
)

# Zoho Mail: "SMTP error codes and resolution" (zoho.com/mail/help).
_ZOHO = (
    # "550 5.4.6 Unusual sending activity detected. Please try after
    # sometime.": a 5xx rate limit on the sending account.
    Rule(R.RATE_LIMITED, "zoho: unusual sending activity (a 5xx rate limit)",
         contains=("unusual sending activity",), transient=True, tier=P),
    # "554 5.1.8 Email Outgoing Blocked.": the account may not send.
    Rule(R.SENDER_REJECTED, "zoho: outgoing blocked",
         contains=("outgoing blocked",), tier=P),
    # ZeptoMail "553 Relaying disallowed as <address>": the From address's
    # domain is not one the account may send as
    # (zoho.com/zeptomail/help/api/smtp-error-codes.html).
    Rule(R.SENDER_REJECTED, "zoho: relaying disallowed as <sender>",
         contains=("relaying disallowed as",), tier=P),
)

# GMX and web.de: postmaster.gmx.net / postmaster.web.de error messages, and
# what KumoMTA's community shaping rules do with them.
_GMX = (
    # "554-Reject due to policy restrictions": KumoMTA slows GMX to one
    # message a minute for an hour, then carries on.
    Rule(R.RATE_LIMITED, "gmx: reject due to policy restrictions",
         contains=("reject due to policy restrictions",), transient=True, hosts=GMX),
    # "554-Reject due to policy violations": KumoMTA suspends for an hour.
    Rule(R.REPUTATION_DEFERRAL, "gmx: reject due to policy violations",
         contains=("reject due to policy violations",), transient=True, hosts=GMX),
    # GMX answers "501 Syntax error in parameters or arguments" when it
    # refuses the sender's configuration.
    Rule(R.POLICY_REJECTED, "gmx: 501 syntax error (configuration refused)", codes=(501,),
         hosts=GMX),
    # "550 <x>: Syntax error in parameters or arguments" is the same refusal
    # at RCPT (smtp.codes/unitedinternet, from GMX's postmaster pages).
    Rule(R.POLICY_REJECTED, "gmx: 550 syntax error in parameters (configuration refused)",
         contains=("syntax error in parameters",), codes=(550,), hosts=GMX),
)

# Comcast: Xfinity postmaster "Comcast error codes" (postmaster.comcast.net):
# eight-character codes such as RL000001 and BL000010; and Cox's AUP codes.
# The regexes start with a long literal ("rl000") so the rule index can gate
# them cheaply.
_COMCAST = (
    Rule(R.RATE_LIMITED, "comcast: RLxxxxxx rate limit", regex=r"\brl000\d{3}\b", tier=P),
    Rule(R.BLOCKLISTED, "comcast: BLxxxxxx block list", regex=r"\bbl000\d{3}\b", tier=P),
    # Cox's AUP# codes (postmaster.cox.net, "Error Codes"; forums.cox.com):
    # CXCNCT is its concurrent-connection limit (a 421), CXSNDR the sender's
    # domain (no MX/A record, or failed SPF/DKIM), CXMJ a Cox account blocked
    # for suspicious activity (its owner must reset the password); CXBL,
    # CDRBL and IPBLxxxx are IP blocks.  An AUP# code it does not know is a
    # block only in a 5xx.
    Rule(R.TOO_MANY_CONNECTIONS, "cox: AUP#CXCNCT concurrent connections",
         contains=("aup#cxcnct",), tier=P),
    Rule(R.SENDER_REJECTED, "cox: AUP#CXSNDR sender domain", contains=("aup#cxsndr",), tier=P),
    Rule(R.AUTH_CREDENTIALS, "cox: AUP#CXMJ account blocked", contains=("aup#cxmj",), tier=P),
    Rule(R.BLOCKLISTED, "cox: AUP#CXBL/CDRBL/IPBL IP blocks",
         contains=("aup#cxbl", "aup#cdrbl", "aup#ipbl"), tier=P),
    Rule(R.BLOCKLISTED, "cox: AUP#... blocked", contains=("aup#",), codes=_REJECT, tier=P),
    # The codes named in the postmaster page's links ("...smtp-error-codes.php#
    # BL000001", "#ES000010": dynamic/residential space, also a block).
    Rule(R.BLOCKLISTED, "comcast: ESxxxxxx dynamic/residential IP space",
         regex=r"\bes0000\d\d\b", tier=P),
    # ("421 - [Too many sessions opened]" is the generic "too many sessions".)
)

# QQ Mail (Tencent): "550 Ip frequency limited", "550 Sender frequency
# limited", "550 Connection frequency limited", "550 Domain frequency
# limited" and "550 Mail content denied" (service.mail.qq.com help); KumoMTA
# suspends QQ for an hour on them, then retries: 5xx replies that mean
# "slow down".
_QQ = (
    Rule(R.RATE_LIMITED, "qq: frequency limited (a 5xx rate limit)",
         contains=("frequency limited",), transient=True, tier=P),
    Rule(R.SPAM_CONTENT, "qq: mail content denied", contains=("mail content denied",),
         tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "qq: mailbox unavailable or access denied",
         contains=("mailbox unavailable or access denied", "mailbox not found"), hosts=QQ),
)

# Others from KumoMTA's community shaping rules (assets/community/shaping.toml
# in https://github.com/KumoCorp/kumomta), Orange's OFRxxx_xxx codes among them.
# AT&T / BellSouth (worldnet.att.net/general-info/bls_info/block_enduser.html;
# smtp.codes/550): "421 failure in DNS look-up." and "550 [permfail] <d>
# requires valid sender domain" / "550 5.7.1 Connections not accepted from
# servers without a valid sender domain. ## Fix reverse DNS for <ip>" ask for
# the sending IP's reverse DNS; "550 unauthorized interface for <ip>" is an
# IP that is no valid source of mail (a block).
ATT = (".att.net", ".bellsouth.net", ".prodigy.net", ".sbcglobal.net")
_ATT = (
    Rule(R.AUTH_POLICY, "at&t: the sending host's DNS (reverse DNS, sender domain)",
         contains=("failure in dns look-up", "valid sender domain"), hosts=ATT),
    Rule(R.BLOCKLISTED, "at&t: unauthorized interface", contains=("unauthorized interface",),
         hosts=ATT),
)

# Barracuda: "550 rejecting spoofed message" is its brand-impersonation
# (phishing) filter, not an SPF/DKIM verdict (smtp.codes/550, Barracuda).
BARRACUDA = (".barracudanetworks.com", ".barracuda.com")
_BARRACUDA = (
    Rule(R.SPAM_CONTENT, "barracuda: rejecting spoofed message (brand impersonation)",
         contains=("rejecting spoofed message",), hosts=BARRACUDA),
)

_OTHERS = (
    Rule(R.TOO_MANY_CONNECTIONS, "orange: trop de connexions / OFR004_104",
         contains=("trop de connexions", "ofr004_104"), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "orange: OFR004_105 deferral", contains=("ofr004_105",),
         tier=P),
    # "Service refuse. Veuillez essayer plus tard.": KumoMTA suspends an hour.
    Rule(R.REPUTATION_DEFERRAL, "orange: service refuse", contains=("service refuse",),
         tier=P),
    # "451 Internal resource temporarily unavailable" is how Mimecast
    # answers a first delivery attempt while it greylists
    # (community.mimecast.com, DOC-1369 "#451").
    Rule(R.GREYLISTED, "mimecast: internal resource temporarily unavailable (greylisting)",
         contains=("internal resource temporarily unavailable",), tier=P),
    Rule(R.SESSION_LIMIT, "netvigator: too many messages for this session",
         contains=("too many messages for this session",), tier=P),
)

# T-Online (postmaster.t-online.de, "Notes for mail server operators"):
# "554 IP=<ip> - A problem occurred. (Ask your postmaster for help or to
# contact tosa@rx.t-online.de to clarify.) (BL)", "554 IP=<ip> - None/bad
# reputation. ... (NOWL)" (an unknown or bad sender, reset on request),
# "554 Dialup/transient IP not allowed. ... (DIAL)": all refuse the sending
# IP until its owner acts.
TONLINE = (".t-online.de",)
_TONLINE = (
    Rule(R.BLOCKLISTED, "t-online: (BL)/(NOWL)/(DIAL) sending IP refused",
         regex=r"\((?:bl|nowl|dial)\)", hosts=TONLINE),
    Rule(R.BLOCKLISTED, "t-online: dialup/transient IP not allowed",
         contains=("dialup/transient ip not allowed",), tier=P),
)

# Mimecast, "Mimecast SMTP Error Codes"
# (mimecastsupport.zendesk.com/hc/en-us/articles/34000709564691): "421
# Unable to process connection at this time" (Mimecast is at maximum load),
# "550 Invalid Recipient", "550 Administrative prohibition - envelope
# blocked", "550 Envelope blocked - User Entry", "550 Rejected by header
# based Blocked Senders", "550 Email rejected due to security policies".
MIMECAST = (".mimecast.com", ".mimecast.co.za", ".mimecast-offshore.com")
_MIMECAST = (
    Rule(R.SERVER_BUSY, "mimecast: unable to process connection at this time",
         contains=("unable to process connection at this time",), tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "mimecast: invalid recipient",
         contains=("invalid recipient",), hosts=MIMECAST),
    # "Policy level block list in force": the recipient organisation's own
    # Blocked Senders policy (Mimecast, "Managing Blocked Senders and Email
    # Rejections"), not a DNS block list.
    Rule(R.POLICY_REJECTED, "mimecast: policy level block list",
         contains=("policy level block list",), tier=P),
    # The same page's other texts: "451 The incorrect hostname used for
    # inbounds" (the recipient domain's MX points at an outbound host: a
    # routing fault, retried), "550 Journal messages past the expiration".
    # Mimecast documents it as a 451 and as a 550; the 550 is the class's.
    Rule(R.CONNECTION_ERROR, "mimecast: incorrect hostname used for inbounds (5xx)",
         contains=("incorrect hostname used for inbound",), codes=_REJECT, transient=False,
         tier=P),
    Rule(R.CONNECTION_ERROR, "mimecast: incorrect hostname used for inbounds",
         contains=("incorrect hostname used for inbound",), tier=P),
)

# Gateways that name their own block list in the reply.
# Proofpoint: "554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=<ip>"
# (Proofpoint Dynamic Reputation; www.proofpoint.com/us/postmaster).
# Trend Micro InterScan: "550 Domain of forward path is not allowed" when the
# recipient domain is not one it relays for (success.trendmicro.com, solution
# 1106332).
_GATEWAYS = (
    Rule(R.BLOCKLISTED, "proofpoint: blocked, see ipcheck.proofpoint.com",
         contains=("ipcheck.proofpoint.com", "proofpoint.com/dnsbl-lookup"), tier=P),
    # Proofpoint answers a client on its real-time block list with "550 5.7.0
    # Local Policy Violation" (a Proofpoint customer's documentation,
    # hunter.cuny.edu, "Spam Interception").
    Rule(R.BLOCKLISTED, "proofpoint: 5.7.0 local policy violation (its block list)",
         contains=("local policy violation",), hosts=(".pphosted.com", ".ppe-hosted.com")),
    Rule(R.RELAY_DENIED, "trend micro: domain of forward path is not allowed",
         contains=("domain of forward path is not allowed",), tier=P),
)

# Sophos Central Email, "SMTP error codes" (docs.sophos.com/central/customer/
# help/en-us/ManageYourProducts/EmailSecurity/SMTPErrorCodes): each rejection
# names an XGEMAIL_00nn code.
_SOPHOS = (
    Rule(R.AUTH_POLICY, "sophos: XGEMAIL_0001-0003 DKIM, SPF or DMARC failed",
         contains=("xgemail_0001", "xgemail_0002", "xgemail_0003"), tier=P),
    Rule(R.BLOCKLISTED, "sophos: XGEMAIL_0004-0005 sender IP or domain on a block list",
         contains=("xgemail_0004", "xgemail_0005"), tier=P),
    Rule(R.TLS_REQUIRED, "sophos: XGEMAIL_0006 TLS version refused",
         contains=("xgemail_0006",), tier=P),
    Rule(R.POLICY_REJECTED, "sophos: XGEMAIL_0007-0009 licence or admin/user block list",
         contains=("xgemail_0007", "xgemail_0008", "xgemail_0009"), tier=P),
    Rule(R.RELAY_DENIED, "sophos: XGEMAIL_0010 recipient domain not protected by Sophos",
         contains=("xgemail_0010",), tier=P),
    Rule(R.RECIPIENT_UNKNOWN, "sophos: XGEMAIL_0011 recipient does not exist",
         contains=("xgemail_0011",), tier=P),
    Rule(R.MESSAGE_TOO_LARGE, "sophos: XGEMAIL_0012 message too large",
         contains=("xgemail_0012",), tier=P),
    Rule(R.TOO_MANY_RECIPIENTS, "sophos: XGEMAIL_0013 too many recipients for a large message",
         contains=("xgemail_0013",), tier=P),
    Rule(R.RATE_LIMITED, "sophos: XGEMAIL_0014-0015 recipient's inbound rate limit",
         contains=("xgemail_0014", "xgemail_0015"), transient=True, tier=P),
)

# Trend Micro Deep Discovery Email Inspector, "SMTP Error Codes"
# (docs.trendmicro.com, deep-discovery-email-inspector-51-online-help-smtp-error-codes):
# "421 Block temporarily (Sender Filtering/Authentication)", "521 Block
# permanently (...)" (a block, not RFC 7504's "does not accept mail"), "450
# Temporary denial of connection (450) for Zombie matches (ERS)", "550
# Permanent denial of connection (550) for RBL+ matches (ERS)".
_TRENDMICRO = (
    Rule(R.POLICY_REJECTED, "trend micro: block (sender filtering/authentication)",
         contains=("permanently (sender filtering", "temporarily (sender filtering"), tier=P),
    Rule(R.REPUTATION_DEFERRAL, "trend micro: zombie matches (ERS)",
         contains=("for zombie matches",), tier=P),
    Rule(R.BLOCKLISTED, "trend micro: RBL+ matches (ERS)", contains=("for rbl+ matches",),
         tier=P),
)

# Korean portals, as their replies are collected in puffinknight.tistory.com/102
# and auctionpro.co.kr/?p=2544: Naver "421 4.3.2 Your IP(<ip>) is filtered
# and this connection will be closed. You must register your IP to
# http://realip.naver.com" (an IP block until registered), "421 4.3.1 You
# send too many messages." (a rate, whatever 4.3.1 says); Daum/Hanmail "554
# 5.7.1 DAS51 <ip>: Your mail is blocked automatically by anti-spam system.
# (E06)" (the sending IP is blocked).
_KOREA = (
    Rule(R.BLOCKLISTED, "naver: IP filtered, register your IP",
         contains=("is filtered and this connection will be closed", "realip.naver.com"),
         tier=P),
    Rule(R.RATE_LIMITED, "naver: you send too many messages",
         contains=("you send too many messages",), tier=P),
    Rule(R.BLOCKLISTED, "daum: blocked automatically by anti-spam system",
         contains=("blocked automatically by anti-spam system",), tier=P),
    # Daum/Kakao "421 4.4.5 CCRT <ip>: Connection refused. Server is busy(RT)":
    # its spam centre has blocked the IP for a while (oliveit.tistory.com/39,
    # a list of the portal's replies with their meanings).
    Rule(R.BLOCKLISTED, "daum: CCRT connection refused (IP blocked for a while)",
         regex=r"\bccrt\b", tier=P),
    # Paran: "550 Transaction failed. (SPAM_SUSPECT:IP_CONTROL)
    # (http://cleanip.paran.com)": the IP must be registered first.
    Rule(R.BLOCKLISTED, "paran: IP_CONTROL, register at cleanip",
         contains=("ip_control", "cleanip."), tier=P),
)

# Mail.ru: "550 message sending for this account is disabled" is about our own
# account (suspected of sending spam; the owner must restore it), not a
# disabled recipient (mailout.ru/2015/09, on Mail.ru's replies).
# Yandex, "Report on non-delivery to Yandex" (yandex.com/support/yandex-360/
# customers/mail/en/bounces/yandex): "Policy rejection on the target address"
# means the recipient's account is blocked for breaking the user agreement;
# "Blocked by spam statistics" / "blocked using spam statistics" blocks the
# sending server for 24 hours.
_YANDEX = (
    Rule(R.MAILBOX_DISABLED, "yandex: policy rejection on the target address",
         contains=("policy rejection on the target address",), tier=P),
    Rule(R.BLOCKLISTED, "yandex: blocked by spam statistics",
         contains=("spam statistics",), tier=P),
)

# Cisco Secure Email (AsyncOS user guide): the LDAP accept query refuses an
# unknown recipient with "550 #5.1.0 Address rejected.".
_CISCO = (
    Rule(R.RECIPIENT_UNKNOWN, "cisco: #5.1.0 address rejected (LDAP accept query)",
         contains=("#5.1.0 address rejected",), tier=P),
)

# Fastmail (a Postfix and Cyrus site): its help pages say that "554 5.0.0
# Unexpected internal error" from its LMTP proxy "actually means the user
# doesn't exist" (fastimap.com/help/troubleshooting_errors_sending_to_other_
# accounts.html), and that a mailbox over quota is refused with a 4xx for a
# week, then a 5xx (fastmail.com/help/account/limits.html): the code class
# decides, as for any mailbox full.
FASTMAIL = (".messagingengine.com", ".fastmail.com", ".fastmail.fm")
_FASTMAIL = (
    Rule(R.RECIPIENT_UNKNOWN, "fastmail: unexpected internal error (user does not exist)",
         contains=("unexpected internal error",), hosts=FASTMAIL),
    Rule(R.MAILBOX_FULL, "fastmail: over quota (4xx for a week, then 5xx)",
         contains=("over quota",), hosts=FASTMAIL),
)

_MAILRU = (
    Rule(R.AUTH_CREDENTIALS, "mail.ru: message sending for this account is disabled",
         contains=("sending for this account is disabled",), tier=P),
)

# Directory-harvest protection (Baruwa: "Dictionary attack detected",
# bastion.umanix.net/info): "556 Too many invalid recipient requests.
# Closing connection." (an Exim ACL quoted in a public bounce) is a session
# cut for too many bad RCPTs, not RFC 7504's "domain does not accept mail",
# whatever its 556 says; a provider-tier rule so it comes before the code.
_HARVEST = (
    Rule(R.PROTOCOL_ERROR, "text: too many invalid recipients (harvest protection)",
         contains=("too many invalid recipient", "too many unknown recipients",
                   "too many bad recipients", "dictionary attack", "directory harvest"),
         tier=P),
)

# Haraka (github.com/haraka/Haraka, connection.js): "550 I cannot deliver mail
# for <x>" when no plugin accepted the recipient, that is, relaying was not
# allowed for it.
_MTA = (
    Rule(R.RELAY_DENIED, "haraka: I cannot deliver mail for (no relaying)",
         contains=("i cannot deliver mail for",), tier=P),
    # qmail-smtpd (cr.yp.to/qmail): "553 sorry, your envelope recipient is in
    # my badrcptto list (#5.7.1)": the site refuses that recipient by policy.
    Rule(R.POLICY_REJECTED, "qmail: envelope recipient in my badrcptto list",
         contains=("badrcptto list",), tier=P),
)

# Stage-aware provider rules: GMX and Apple refuse the greeting this way.
_GREETING = (
    Rule(R.BLOCKLISTED, "554 greeting with an IP block text", codes=(554,),
         stages=(Stage.CONNECT,), contains=("ip", "blocked", "listed"), hosts=GMX + APPLE),
)

PROVIDER_RULES: tuple[Rule, ...] = (
    *_TEMPERROR, *_GMAIL, *_MICROSOFT, *_YAHOO, *_AOL, *_APPLE, *_SES, *_SENDGRID, *_MAILGUN,
    *_ZOHO, *_GMX,
    *_COMCAST, *_QQ, *_ATT, *_BARRACUDA, *_OTHERS, *_TONLINE, *_MIMECAST, *_GATEWAYS,
    *_SOPHOS, *_TRENDMICRO, *_KOREA, *_YANDEX, *_CISCO, *_FASTMAIL, *_MAILRU, *_HARVEST, *_MTA,
    *_GREETING,
)
# fmt: on
