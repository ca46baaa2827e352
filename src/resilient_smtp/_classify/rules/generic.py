"""Generic rules: enhanced status codes, basic codes, common reply texts.

Sources: RFC 5321 (§3.1, §3.8, §4.2, §4.5.3.1.10), RFC 3463 and the IANA
enhanced status code registry (RFC 4954, 5248, 7293, 7372, 7505, 8617,
8689), RFC 7504, and the reply texts that Postfix, Exim, Sendmail and qmail
send (Postfix's anvil and postscreen, https://www.postfix.org/postconf.5.html;
Sendmail's ratecontrol/conncontrol features, described in its cf/README).
Rules within a tier are tried in the order written: the specific before the
general.

The tables are data, aligned by hand: ``# fmt: off`` keeps the formatter
from putting every string on its own line.
"""

from __future__ import annotations

from resilient_smtp._classify.rule import Rule, Tier
from resilient_smtp._classify.taxonomy import Reason as R
from resilient_smtp._classify.taxonomy import Stage

__all__ = ["GENERIC_RULES"]

_DEFER = (421, 450, 451, 452)
_PERMANENT = (500, 550, 551, 552, 553, 554)
_ANY_5XX = tuple(range(500, 600))

# fmt: off
_STATUS = (
    # RFC 7504: 521 "host does not accept mail", 556 "domain does not accept
    # mail" (null MX), in so many words; checked before the x.3.2 status they
    # carry.  A bare 521/556 is a fallback below: Postfix's postscreen also
    # drops clients with "521 5.5.1 Protocol error", "521 5.7.0 Error: I can
    # break rules, too. Goodbye." and "521 5.3.2 Service currently
    # unavailable" (postscreen_early.c, postscreen_smtpd.c, postscreen.c).
    Rule(R.DOMAIN_UNKNOWN, "521/556: does not accept mail (RFC 7504)", codes=(521, 556),
         contains=("does not accept mail", "not accept email", "no mail service"),
         tier=Tier.STATUS),
    # RFC 7504 §3 pairs 521 with 5.3.2 ("system not accepting network
    # messages"): that pair is the RFC's "does not accept mail".
    Rule(R.DOMAIN_UNKNOWN, "521 5.3.2: does not accept mail (RFC 7504)", codes=(521,),
         status="5.3.2", tier=Tier.STATUS),
    # postscreen's denylist with its "enforce" action: "550 5.3.2 Service
    # currently unavailable" refuses this client, before the generic 5.3.2.
    # (Its "drop" action sends the same text as a 521, which RFC 7504 reads
    # as "does not accept mail", above.)
    Rule(R.BLOCKLISTED, "5.3.2 service currently unavailable: a refused client (postscreen)",
         status="5.3.2", contains=("service currently unavailable",), codes=(550, 554),
         tier=Tier.STATUS),
    # A bad address at MAIL FROM is about the sender, whatever the detail.
    Rule(R.SENDER_REJECTED, "x.1.x at MAIL FROM: the sender address", status="x.1.",
         stages=(Stage.MAIL,)),
    # A 5.1.1 that says the mailbox exists but is switched off: "550 5.1.1
    # Inactive mbox", "550 5.1.1 Suspended user" (Korean portals' replies,
    # collected in puffinknight.tistory.com/102).  (iCloud's "550 5.1.1 <x>:
    # inactive email address" is an address it does not have: not here.)
    Rule(R.MAILBOX_DISABLED, "x.1.1 with an inactive or suspended mailbox", status="x.1.1",
         contains=("inactive mbox", "inactive mailbox", "suspended", "deactivated",
                   "discontinued"),
         tier=Tier.STATUS),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.1 bad destination mailbox", status="x.1.1"),
    # Exchange "550 5.1.2 Invalid X.400 address" (Exchange Online NDR list (learn.microsoft.com,
    # "Email non-delivery reports and SMTP errors in Exchange Online")) is the address, not its
    # system.
    Rule(R.RECIPIENT_UNKNOWN, "x.1.2 naming an invalid X.400 address", status="x.1.2",
         contains=("x.400 address",), tier=Tier.STATUS),
    Rule(R.DOMAIN_UNKNOWN, "x.1.2 bad destination system", status="x.1.2"),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.3 bad destination mailbox syntax", status="x.1.3"),
    Rule(R.RECIPIENT_UNKNOWN, "x.1.6 mailbox has moved", status="x.1.6"),
    Rule(R.SENDER_REJECTED, "x.1.7 bad sender mailbox syntax", status="x.1.7"),
    Rule(R.SENDER_REJECTED, "x.1.8 bad sender system address", status="x.1.8"),
    Rule(R.DOMAIN_UNKNOWN, "x.1.10 recipient domain has a null MX (RFC 7505)",
         status="x.1.10"),
    # A 5.2.1 that says the address is unknown: AT&T "550 5.2.1 <x>...
    # Addressee unknown", "... blank mailhost - invalid address"
    # (smtp.codes/550).
    Rule(R.RECIPIENT_UNKNOWN, "5.2.1 that says the address is unknown", status="5.2.1",
         contains=("addressee unknown", "user unknown", "unknown user", "invalid address",
                   "no such user", "does not exist", "not found"),
         tier=Tier.STATUS),
    Rule(R.MAILBOX_DISABLED, "5.2.1 mailbox disabled", status="5.2.1"),
    # A status its text contradicts: EveryCloud's gateway reason codes (support.everycloudtech.com,
    # "Workspace reason codes") "550 5.2.2 explicit blocking of sender or recipient address" is a
    # block, not a full mailbox.
    Rule(R.POLICY_REJECTED, "x.2.2 whose text says the address is blocked", status="x.2.2",
         contains=("blocking of", "explicit block"), tier=Tier.STATUS),
    Rule(R.MAILBOX_FULL, "x.2.2 mailbox full", status="x.2.2"),
    Rule(R.MESSAGE_TOO_LARGE, "x.2.3 message length exceeds limit", status="x.2.3"),
    Rule(R.SERVER_BUSY, "x.3.1 mail system full", status="x.3.1"),
    Rule(R.POLICY_REJECTED, "5.3.2 system not accepting network messages", status="5.3.2"),
    # RFC 3463 (and OpenSMTPD, which sends its descriptions: usr.sbin/smtpd/esc.c): x.3.3 "System
    # not capable of selected features" (a feature the message asked for, such as 8BITMIME or
    # BINARYMIME).
    Rule(R.PROTOCOL_ERROR, "x.3.3 system not capable of selected features", status="x.3.3"),
    Rule(R.MESSAGE_TOO_LARGE, "x.3.4 message too big for system", status="x.3.4"),
    Rule(R.DOMAIN_UNKNOWN, "5.4.4 unable to route", status="5.4.4"),
    Rule(R.EXPIRED, "x.4.7 delivery time expired", status="x.4.7"),
    # OpenSMTPD answers its per-session message limit (max-mails) with
    # "452 4.5.3 Too many recipients: Too many messages sent" (smtp_session.c:
    # "we can pretend we had too many recipients"): a new connection goes on.
    Rule(R.SESSION_LIMIT, "4.5.3 too many messages sent: a per-session limit (OpenSMTPD)",
         status="4.5.3", contains=("too many messages sent",), tier=Tier.STATUS),
    # The same gateway reuses 5.5.3: "550 5.5.3 recipient address rejected:
    # multi-recipient bounce" (a bounce to many, refused by policy, as
    # Postfix's "Data command rejected: Multi-recipient bounce"), "554 5.5.3
    # email rejected due to Content Filter Size Limit" (EveryCloud's gateway reason codes
    # (support.everycloudtech.com, "Workspace reason codes")).
    Rule(R.POLICY_REJECTED, "x.5.3 whose text says multi-recipient bounce", status="x.5.3",
         contains=("multi-recipient bounce",), tier=Tier.STATUS),
    Rule(R.MESSAGE_TOO_LARGE, "x.5.3 whose text says a size limit", status="x.5.3",
         contains=("size limit", "too large", "message size"), tier=Tier.STATUS),
    Rule(R.TOO_MANY_RECIPIENTS, "x.5.3 too many recipients", status="x.5.3"),
    Rule(R.AUTH_CREDENTIALS, "x.7.8 authentication credentials invalid", status="x.7.8"),
    # RFC 4954 §6: x.7.9 answers AUTH.  Yahoo sends "550 5.7.9" for policy
    # and DMARC blocks (senders.yahooinc.com/smtp-error-codes), so the code
    # means "mechanism too weak" only in an AUTH reply.
    Rule(R.AUTH_CREDENTIALS, "x.7.9 authentication mechanism too weak", status="x.7.9",
         codes=(534, 535, 538)),
    Rule(R.AUTH_CREDENTIALS, "x.7.9 authentication mechanism too weak", status="x.7.9",
         stages=(Stage.AUTH,)),
    Rule(R.TLS_REQUIRED, "x.7.10 encryption needed", status="x.7.10"),
    Rule(R.TLS_REQUIRED, "x.7.11 encryption required for requested mechanism",
         status="x.7.11"),
    # RFC 4954 §6: x.7.12 "a password transition is needed"; IANA x.7.13
    # "user account disabled" -- our own account, in an AUTH reply.
    # Only in an AUTH reply: Exchange Online's "550 5.7.12 Sender was not
    # authenticated by organization" is a recipient restriction (its NDR list).
    Rule(R.AUTH_CREDENTIALS, "x.7.12 password transition needed (RFC 4954)",
         status="x.7.12", codes=(432, 534, 535, 538)),
    Rule(R.AUTH_CREDENTIALS, "x.7.12 password transition needed (RFC 4954)",
         status="x.7.12", stages=(Stage.AUTH,)),
    Rule(R.AUTH_CREDENTIALS, "x.7.13 user account disabled", status="x.7.13",
         stages=(Stage.AUTH,)),
    # RFC 7293 §3.3: the mailbox (x.7.17) or domain (x.7.18) changed owner
    # since the time the sender gave; this recipient is someone else now.
    Rule(R.MAILBOX_DISABLED, "x.7.17 mailbox owner has changed (RFC 7293)", status="x.7.17"),
    Rule(R.DOMAIN_UNKNOWN, "x.7.18 domain owner has changed (RFC 7293)", status="x.7.18"),
    # RFC 7372 §3: x.7.20-22 DKIM signature missing, unacceptable or not the
    # author's; x.7.23-24 SPF; x.7.25 reverse DNS; x.7.26 several checks.
    Rule(R.AUTH_POLICY, "x.7.20 no passing DKIM signature (RFC 7372)", status="x.7.20"),
    Rule(R.AUTH_POLICY, "x.7.21 no acceptable DKIM signature (RFC 7372)", status="x.7.21"),
    Rule(R.AUTH_POLICY, "x.7.22 no author-matched DKIM signature (RFC 7372)",
         status="x.7.22"),
    Rule(R.AUTH_POLICY, "x.7.23 SPF validation failed (RFC 7372)", status="x.7.23"),
    Rule(R.AUTH_POLICY, "x.7.24 SPF validation error (RFC 7372)", status="x.7.24"),
    Rule(R.AUTH_POLICY, "x.7.25 reverse DNS validation failed (RFC 7372)", status="x.7.25"),
    Rule(R.AUTH_POLICY, "x.7.26 multiple authentication checks failed (RFC 7372)",
         status="x.7.26"),
    Rule(R.SENDER_REJECTED, "5.7.27 sender address has null MX (RFC 7505)", status="5.7.27"),
    # Gmail's 2023+ deferral for unusual volume of unsolicited mail
    # ("421 4.7.28 ... unusual rate of unsolicited mail ... temporarily rate
    # limited"; IANA: "mail flood detected"): a reputation problem,
    # answered by a long back-off.
    Rule(R.REPUTATION_DEFERRAL, "4.7.28 unusual rate of unsolicited mail", status="4.7.28"),
    # RFC 8617 §5.2.3: x.7.29 ARC validation failure.  RFC 8689 §5: x.7.30
    # REQUIRETLS support required.  (Gmail gives both numbers other
    # meanings; its provider rules come first.)
    Rule(R.AUTH_POLICY, "x.7.29 ARC validation failure (RFC 8617)", status="x.7.29"),
    Rule(R.TLS_REQUIRED, "x.7.30 REQUIRETLS support required (RFC 8689)", status="x.7.30"),
)

_CODE = (
    Rule(R.AUTH_CREDENTIALS, "535 authentication credentials invalid", codes=(535,)),
    Rule(R.AUTH_CREDENTIALS, "534 authentication mechanism too weak", codes=(534,)),
    # A fallback, so a text that names its cause wins: Coremail sends "555
    # helohost error." for a HELO check (its documented list,
    # blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
    Rule(R.PROTOCOL_ERROR, "555 MAIL/RCPT parameters not recognised", codes=(555,),
         tier=Tier.FALLBACK),
)

_SPAM_WORDS = (
    "spam", "unsolicited", "junk mail", "virus", "malware", "phishing", "content denied",
    "content rejected", "suspicious content", "message content", "bulk mail", "infected",
    "message is suspicious",
    # Coremail "552 message rejected by anti-spam engine.", "552 too many
    # same size mails." (bulk detection); MailChannels "550 5.7.1 [CS] Message
    # blocked. If this is a false positive, please report this to your
    # hosting service provider." (a content scan).
    "anti-spam engine", "antispam engine", "same size mails", "too many same",
    "too many similar", "false positive",
    # Symantec Email Security.cloud's list of recipient-side rejections (knowledge.broadcom.com,
    # articles 162445 and 169925): "552 MS-Office file containing VBA macros found inside of the
    # email".
    "vba macro", "macros found",
)
_LATER_WORDS = ("try again later", "try later", "please try again", "temporar")
_BUSY_WORDS = (
    "temporary local problem", "temporary system problem",
    "temporary server error", "temporary failure", "service not available",
    "service unavailable", "service currently unavailable", "server busy",
    "system busy", "too busy", "server is busy", "insufficient system storage",
    "mail system full",
    "local error in processing", "temporarily unavailable", "maintenance",
    "overloaded", "high load", "system load", "resources temporarily",
    "try again later", "try later", "internal error", "server error",
    # Daum "421 4.4.1 CHIC <ip>: Network is busy." (puffinknight.tistory.com/102).
    "is busy",
)
# A 4xx that names trouble on the server's own side: a failed look-up, a
# full or unwritable spool, a configuration error, load.  These are not
# greylisting and not a verdict on us: reconnect, later or elsewhere.
# Postfix (src/smtpd/smtpd.c, smtpd_check.c, postscreen.c,
# global/cleanup_strerror.c): "451 4.3.0 <x>: Temporary lookup failure",
# "451 4.3.0 Temporary lookup error", "451 4.3.0 Error: queue file write
# error", "451 4.3.0 Error: internal protocol error", "421 4.3.5 Server
# configuration error", "421 4.3.0 <host> Server local data error", "421
# 4.3.0 Mail system error", "421 4.3.2 No system resources", "454 4.7.0 TLS
# not available due to local problem".  Exim (src/src/smtp_in.c, acl.c,
# receive.c): "451 Temporary local problem - please try later", "421 <host>:
# Too much load; please try again later", "452 Space shortage, please try
# later", "451 Error while writing spool file", "421 Local configuration
# error", "454 TLS currently unavailable", "435 Unable to authenticate at
# present", "451 Cannot resolve <x> at this time", "451 Could not complete
# sender verify callout".  OpenSMTPD (smtp_session.c): "421 4.0.0 Temporary
# Error", "421 Internal server error".  qmail-smtpd: "451 qq temporary
# problem (#4.3.0)", "451 qq write error or disk full (#4.3.0)", "421 unable
# to read controls (#4.3.0)", "421 out of memory (#4.3.0)", "451 DNS
# temporary failure (#4.3.0)".  Sendmail: "452 4.4.5 Insufficient disk
# space; try again later".  Exchange: "432 4.3.2 STOREDRV; mailbox server is
# too busy", "451 4.7.0 Temporary server error. Please try again later.
# PRX5", "451 4.4.0 Message failed to be made redundant" (Exchange Online
# NDR list).  (A check that failed temporarily, Cisco's "451 #4.4.3
# Temporary error occurred during SPF verification.", is a provider-tier
# rule in providers.py, so it comes before every provider's SPF words.)
# RFC 5321 §4.2.2: "451 Requested action aborted: local error in
# processing", "452 ... insufficient system storage".
_SERVER_TROUBLE_WORDS = (
    "temporary lookup failure", "temporary lookup error", "queue file write error",
    "internal protocol error", "server configuration error", "server configuration problem",
    "local configuration error", "server local data error", "server local error",
    "mail system error", "no system resources", "insufficient system storage",
    "insufficient system resources", "insufficient disk space", "space shortage",
    "spool file", "write error", "unable to read controls", "out of memory",
    "too much load", "temporary local problem", "local error in processing",
    "temporary server error", "temporary system error", "temporary system failure",
    "internal server error", "qq temporary problem", "qq write error", "qq read error",
    "dns temporary failure",
    "temporary dns failure", "could not complete sender verify callout",
    "could not complete recipient verify",
    "verification temporarily unavailable",
    "unable to authenticate at present", "try another server", "failed to be made redundant",
    # Postfix with Cyrus SASL: "454 4.7.0 Temporary authentication failure:
    # Connection lost to authentication server" (SASL_README).
    "temporary authentication failure", "no space left on device",
    # amavisd-new: "451 4.5.0 Error in processing, id=..., spam_scan FAILED"
    # (its checker failed; not a spam verdict).
    "error in processing",
    "server is too busy",
    # Exchange "432 4.3.2 STOREDRV.Deliver; mailbox database thread limit
    # exceeded" (NDR list): the server's load, not our connection count.
    "database thread limit",
    # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and SMTP errors in
    # Exchange Online"): "451 4.4.24/25/28 Message failed to be replicated: ...", "432 4.7.700 PFA
    # agent busy, please try again.".
    "failed to be replicated", "healthy secondary", "agent busy",
    # Exim (src/src/smtp_in.c, receive.c, verify.c, configure.default): "458 Unable to fork
    # process", "458 Internal failure", "435 Internal error" (amavisd-new: "can't fork").
    "unable to fork", "can't fork", "cannot fork", "internal failure", "internal error",
    # The server's own DNS look-up timed out or failed: Haraka "450 DNS
    # timeout resolving your HELO hostname" (haraka-plugin-helo.checks),
    # "450 Temp. resolver error (ETIMEOUT)" (haraka-plugin-mail_from.
    # is_resolvable).
    "dns timeout", "resolver error", "resolver failure", "temp. resolver",
    # Its virus scanner failed (not a verdict on the message): Haraka's clamd
    # plugin "451 Error connecting to virus scanner", "451 Virus scanner timed
    # out", "451 Virus scanner error", "451 Error running virus scanner".
    "virus scanner", "virus scan failed", "scanner timed out", "scanner error",
    "unable to scan", "could not scan", "scanner unavailable",
    # Coremail "450 queue unavailable.", "450 database temporary error."
    # (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
    "queue unavailable", "queue is unavailable", "database error", "database temporary",
)
# Weaker words, tried after the cause words (greylisting, rates, connection
# counts, DNS): OpenSMTPD "421 4.0.0 Temporary Error"/"Temporary failure",
# Haraka "421 Too busy; please try again later".
_SERVER_TROUBLE_WEAK = (
    "temporary error", "temporary failure", "currently unavailable", "too busy",
    "cannot resolve", "local problem", "lookup failed", "lookup failure",
    # Exchange "432 4.2.0 STOREDRV.Deliver; Agent transient failure during
    # message resubmission" (NDR list).
    "transient failure", "not ready",
    # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes" (community.mimecast.com;
    # texts as collected in sisimai's Rhost/Mimecast.pm): "451 Unable to process command", "451
    # Unable to process an email at this time", "451 Account service is temporarily unavailable".
    "unable to process",
    # The server's own look-ups or stores, in other words than the strong
    # list's: "unable to resolve ... at this time", "DNS resolution
    # temporarily failed", "could not connect to database" (the same class as
    # Exim's "451 Cannot resolve <x> at this time" and Coremail's "450
    # database temporary error.").
    "unable to resolve", "could not resolve", "can't resolve", "dns resolution",
    "temporarily failed", "database",
    # RFC 3463 (and OpenSMTPD, which sends its descriptions: usr.sbin/smtpd/esc.c): x.4.3
    # "Directory server failure".
    "directory server", "directory failure", "ldap",
)
_TEMP_CODES = (421, 432, 435, 450, 451, 452, 454, 458)
# An address refused for its form, which names the address it answers.
_ADDRESS_FORM_WORDS = (
    "mailbox name not allowed", "mailbox name invalid", "address must contain a domain",
    "fully-qualified address", "fully qualified address", "improper recipient address",
    "improper sender address", "supplying a domain name",
    # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes" (community.mimecast.com;
    # texts as collected in sisimai's Rhost/Mimecast.pm): "501 Invalid address" (at RCPT).
    "invalid address",
    # OpenSMTPD "501 5.1.0 Recipient address syntax error", "553 5.1.0 Sender
    # address syntax error" (smtp_session.c).
    "address syntax",
    # Exim (src/src/smtp_in.c, receive.c, verify.c, configure.default): "550 Restricted characters
    # in address".
    "restricted characters",
    # smtpf (Barricade MX), "SMTP Replies" (snertsoft.com/smtp/smtpf/reply.html): "550 5.7.1
    # special case of at-sign in local-part denied #133".
    "at-sign in local-part",
)
_REPUTATION_WORDS = ("reputation", "temporarily deferred", "user complaints", "unexpected volume")

_TEXT = (
    # Relays that gave up say so in their own words: Exim ("retry timeout
    # exceeded", "all hosts have been failing for a long time", smtp.c),
    # qmail ("this message has been in the queue too long", qmail-send.c),
    # Microsoft ("QUEUE.Expired", 4.4.7).
    Rule(R.EXPIRED, "text: delivery time expired",
         contains=("queue.expired", "message expired", "delivery time expired",
                   "retry timeout exceeded", "too long in queue", "in the queue too long",
                   "have been failing for a long time",
                   "retry time not reached for any host after a long failure period",
                   # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes"
                   # (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm):
                   # "550 Journal messages past the expiration".
                   "past the expiration", "past expiration", "queued too long")),
    # A header that appears twice is the message builder's fault, even when
    # the header is DKIM-Signature (Amazon SES: "554 Transaction failed:
    # Duplicate header 'X'").
    Rule(R.CONTENT_REJECTED, "text: duplicate header",
         contains=("duplicate header", "duplicated header")),
    # Postgrey "450 4.2.0 ... Greylisted, see http://postgrey...";
    # milter-greylist "451 4.7.1 Greylisting in action, please come back
    # later"; "... is not yet authorized to deliver mail from".
    Rule(R.GREYLISTED, "text: greylisting",
         contains=("greylist", "graylist", "grey-list", "gray-list", "grey list",
                   "gray list", "postgrey", "not yet authorized to deliver mail from")),
    # A reverse-DNS check that failed, even "temporarily", is about the
    # sending IP's PTR record, which its owner fixes: Comcast "421 ... Reverse
    # DNS failure : Try again later", Haraka "421 rDNS Temporary Failure"
    # (connection.js), Postfix "450 4.7.1 Client host rejected: cannot find
    # your reverse hostname".
    Rule(R.AUTH_POLICY, "text: reverse DNS of the sending IP",
         contains=("reverse dns", "rdns", "reverse hostname", "cannot find your hostname",
                   "reverse lookup", "ptr record")),
    # Before every other cause word: "451 4.7.0 Temporary server error. Please
    # try again later" is not a rate limit, "451 4.5.0 Error in processing,
    # ... spam_scan FAILED" (amavis) not a spam verdict.
    Rule(R.SERVER_BUSY, "text: a 4xx for trouble on the server's side",
         contains=_SERVER_TROUBLE_WORDS, codes=_TEMP_CODES),
    # Words that only describe a message's form, before the spam and sender
    # words: "550 5.7.512 Access denied, message must be RFC 5322 section
    # 3.6.2 compliant and include a From address" (Exchange Online), "554
    # Message not allowed - Headers are not RFC compliant[291]" (Yahoo),
    # "554 5.6.0 Invalid message content" (Exchange), Haraka's "554
    # Transaction failed due to too many MIME parts".
    Rule(R.CONTENT_REJECTED, "text: the message's format (RFC 5322, MIME)",
         contains=("rfc 5322", "rfc5322", "rfc 2822", "rfc2822", "rfc 822 ", "rfc compliant",
                   "invalid message content", "mime parts", "bare linefeed",
                   # Haraka "451 Bare line-feed; see http://haraka.github.io/
                   # barelf/" (connection.js).
                   "bare line-feed", "bare line feed", "bare lf", "bare <lf>",
                   # Haraka's headers plugin: "550 Required header 'Date'
                   # missing", "550 The Date header is too far in the future",
                   # "550 Only one From header allowed. See RFC 5322, Section 3.6".
                   "required header", "header missing", "missing header",
                   # Coremail "451 stray newline" (a bare LF,
                   # blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "stray newline", "stray lf", "stray cr", "bare cr",
                   # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and
                   # SMTP errors in Exchange Online"): "550 5.0.350 Generic error; x-dg-ref header
                   # is too long".
                   "header is too long", "header too long",
                   # Google Workspace SMTP error reference (support.google.com/a/answer/3726730):
                   # "550 5.7.1 Messages missing a valid address in the From: header, or having no
                   # From: header, are not accepted.", "... a Unicode character in a disallowed
                   # header.".
                   "from: header", "disallowed header", "message-id: header",
                   # Exim (src/src/smtp_in.c, receive.c, verify.c, configure.default): "552 A
                   # message header line is too long", "552 Message header is ridiculously long",
                   # "552 Message header not CRLF terminated", "550 maximum allowed line length is
                   # 998 octets", "550 header syntax".
                   "header line", "ridiculously long", "crlf terminated", "line length",
                   "header syntax",
                   # RFC 3463 (and OpenSMTPD, which sends its descriptions: usr.sbin/smtpd/esc.c):
                   # "554 5.7.7 Message integrity failure".
                   "integrity failure", "message integrity",
                   # Symantec Email Security.cloud's list of recipient-side rejections
                   # (knowledge.broadcom.com, articles 162445 and 169925): "554 Rejected due to
                   # banned content" (amavisd-new's BANNED: a forbidden file name or type).
                   "banned content", "banned attachment", "banned file",
                   # EveryCloud's gateway reason codes (support.everycloudtech.com, "Workspace
                   # reason codes"): "554 5.5.7 email rejected due to content of attachment";
                   # Iridis mailRelay "550 MSG-EXT: Blacklisted high risk file extension detected"
                   # (portal.iridis.uk, article 254).
                   "content of attachment", "file extension", "attachment type",
                   "attachment extension", "forbidden attachment",
                   "date header", "header allowed",
                   # Exchange "554 5.2.0 STOREDRV.Deliver.Exception:
                   # ConversionFailedException; ... Content conversion: Corrupt
                   # summary TNEF content" (NDR list).
                   "conversionfailed", "content conversion")),
    # Providers that say outright that retrying is pointless (Yahoo's TSS09
    # text is the best known); a 421 with this text is not transient.
    Rule(R.BLOCKLISTED, "text: retrying will not succeed",
         contains=("retrying will not succeed", "permanently deferred"), transient=False),
    # The recipient's own block list is a policy of that recipient, not a
    # DNS block list and not a spam verdict: "550 You are registered as
    # spammer (by user's reject list)", Mimecast's "Blocked Senders".
    Rule(R.POLICY_REJECTED, "text: the recipient's own block list",
         contains=("reject list", "blocked senders", "recipient's block list",
                   "blocked by the recipient", "blocked by recipient",
                   # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes"
                   # (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm):
                   # "550 Envelope rejected - Block policy for envelope from address", "550
                   # Rejected by header-based Manually Blocked Senders - block for manual block".
                   "block policy", "manually blocked", "managed senders",
                   # Symantec Email Security.cloud's list of recipient-side rejections
                   # (knowledge.broadcom.com, articles 162445 and 169925): "551 Sender is on
                   # domain's blacklist".
                   "domain's blacklist", "domain's block list", "domain's blocklist")),
    # An account switched off as a whole: its inbound mail is the recipient
    # organisation's setting, its outbound mail ours.  Mimecast "451 Account
    # inbounds disabled", "451 Account outbounds disabled" (Mimecast, "Email Security Cloud
    # Gateway: Mimecast SMTP error codes" (community.mimecast.com; texts as collected in sisimai's
    # Rhost/Mimecast.pm)); Mail.ru "550 message sending for this account is disabled"
    # (mailout.ru/2015/09).
    Rule(R.POLICY_REJECTED, "text: the account's inbound mail is disabled",
         contains=("disabled",), regex=r"\binbounds? (?:mail )?(?:is |are )?disabled"),
    Rule(R.AUTH_CREDENTIALS, "text: the account's outbound mail is disabled (4xx)",
         contains=("disabled",), codes=_TEMP_CODES, transient=True,
         regex=r"\b(?:outbounds?|outgoing mail|sending)\b.{0,30}\b(?:is |are )?disabled"),
    Rule(R.AUTH_CREDENTIALS, "text: the account's outbound mail is disabled",
         contains=("disabled",),
         regex=r"\b(?:outbounds?|outgoing mail|sending)\b.{0,30}\b(?:is |are )?disabled"),
    # A bounce (null sender) refused as such is the receiver's policy, not a
    # verdict on our authentication: Haraka's bounce plugin "550 Bounces not
    # accepted here", "550 Invalid bounce (spoofed sender)", "550 <x> does not
    # accept bounces", "550 this bounce message has too many recipients".
    Rule(R.POLICY_REJECTED, "text: bounces refused",
         contains=("bounces not accepted", "not accept bounces", "invalid bounce",
                   "bounce message has", "bounce with non-empty")),
    # An open relay check refuses the client as a relay it can abuse, a
    # block on the IP, not a refusal to relay for us: Coremail "554 openrelay
    # check." (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
    # (Not "451 Open relay not allowed", Mimecast's refusal to relay for us.)
    Rule(R.BLOCKLISTED, "text: the client was found to be an open relay",
         contains=("openrelay check", "open relay check", "is an open relay",
                   "as an open relay", "open relay detected")),
    # A *recipient* on a block list is the receiving site's own rule, not a
    # DNS list: smtpf (Barricade MX), "SMTP Replies" (snertsoft.com/smtp/smtpf/reply.html) "550
    # 5.7.1 recipient <x> black listed #139".
    Rule(R.POLICY_REJECTED, "text: a recipient on the site's block list",
         contains=("black listed", "blacklisted", "blocklisted", "block listed"),
         regex=r"\brecipient\b.{0,80}\b(?:black|block) ?listed"),
    Rule(R.BLOCKLISTED, "text: listed on a DNS blocklist",
         contains=("spamhaus", "blocklist", "blacklist", "block list", "black list", "dnsbl",
                   "spamcop", "barracuda", "sorbs.net", "abuseat", "blocked using",
                   "client host blocked", "ip blocked", "listed at", "listed on",
                   "banned sending ip", "on our block",
                   # Outlook.com: "550 SC-004 ... A block has been placed against
                   # your IP address", "550 DY-001 ... we generally do not accept
                   # email from dynamic IP's"; Comcast ES000010 "dynamic/
                   # residential IP space"; Mimecast "421 Sender address blocked".
                   "block has been placed", "dynamic ip", "residential ip",
                   "dynamic/residential", "sender address blocked", "ip address has been blocked",
                   # Cisco Secure Email's HAT refusals: "554 Your access to this
                   # mail system has been rejected due to the sending MTA's poor
                   # reputation", "550 #5.7.1 Your access to submit messages to
                   # this e-mail system has been rejected".
                   "your access to",
                   # Coremail "550 black ip.", "554 Black mail address.", "554 rbl
                   # deny." (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "black ip", "black mail address", "black address", "black sender",
                   "black domain", "blacked",
                   # AT&T "550 Error. Blocked for abuse" (att.net, "Mailblock").
                   "blocked for abuse", "blocked due to abuse",
                   # spamdyke "554 Refused. Your domain name is listed in the
                   # RHSBL at <zone>" (spamdyke.h, github.com/chrisboulton/spamdyke).
                   "rhsbl", "uribl", "surbl")),
    # "550 IP 192.0.2.1 is blocked by EarthLink", "... IP address ... has been
    # blocked": the sending IP, named, is blocked.
    Rule(R.BLOCKLISTED, "text: the sending IP is blocked",
         contains=("blocked",),
         regex=r"\bip(?: address)?\b[\s\[\]\d.:a-f()]{0,45}\b(?:is|was|has been) "
               r"(?:temporarily )?blocked"),
    # The same with the address alone: AT&T "521 <192.0.2.1> is blocked", "550
    # <192.0.2.1> blocked by ldap:ou=rblmx,dc=bellsouth,dc=net" (att.net).
    Rule(R.BLOCKLISTED, "text: an IP address literal that is blocked",
         contains=("blocked",),
         regex=r"\b\d{1,3}(?:\.\d{1,3}){3}\b[\]>)]*\s+(?:is\s+|was\s+|has\s+been\s+)?"
               r"(?:temporarily\s+)?blocked\b"),
    Rule(R.BLOCKLISTED, "text: an RBL", regex=r"\brbl\b"),
    # A reputation *rejection* (5xx) is a block; a 4xx is a deferral
    # (KumoMTA's shaping rules suspend on "temporarily rate limited due to
    # IP reputation" and retry later).
    Rule(R.BLOCKLISTED, "text: rejected for sender reputation",
         contains=("reputation",), codes=(550, 553, 554)),
    Rule(R.REPUTATION_DEFERRAL, "text: sender reputation", contains=_REPUTATION_WORDS),
    # spam_content is permanent (taxonomy.py), but a 4xx spam verdict (Gmail's
    # "421 4.7.0 ... suspicious") is a deferral and may pass later.
    Rule(R.SPAM_CONTENT, "text: content judged as spam, deferred", contains=_SPAM_WORDS,
         codes=_DEFER, transient=True),
    Rule(R.SPAM_CONTENT, "text: content judged as spam or malware", contains=_SPAM_WORDS),
    Rule(R.TLS_REQUIRED, "text: TLS required",
         contains=("starttls", "tls required", "requires tls", "tls is required",
                   "encryption required", "must use tls", "not sent over tls",
                   "tls connection required", "secure connection required",
                   # Exchange Online: "451 4.7.5 Remote certificate failed
                   # MTA-STS validation", "4.7.323 tlsa-invalid: The domain
                   # failed DANE validation" (NDR list; RFC 8461, RFC 7672).
                   "mta-sts", "dane validation", "tlsa-invalid", "certificate failed",
                   # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes"
                   # (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm):
                   # "553 This route requires encryption (TLS)", "553 This route requires TLS
                   # version 1.2 or greater", "553 This route requires high-strength ciphers", "554
                   # Configuration is invalid for this certificate".
                   "requires encryption", "tls version", "strength ciphers",
                   # RFC 3463 (and OpenSMTPD, which sends its descriptions: usr.sbin/smtpd/esc.c):
                   # "554 5.7.4 Security features not supported".
                   "security features not supported",
                   "for this certificate", "certificate is invalid", "certificate expired",
                   # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and
                   # SMTP errors in Exchange Online"): "451 4.7.324 dnssec-invalid: ...", "550
                   # 5.7.325 certificate-host-mismatch: Remote certificate MUST ...", "550 5.7.322
                   # certificate-expired: ..." (DANE, RFC 7672).
                   "dnssec-invalid", "certificate-host-mismatch", "certificate-expired",
                   "remote certificate")),
    Rule(R.AUTH_POLICY, "text: SPF/DKIM/DMARC, reverse DNS or HELO",
         contains=("spf", "dkim", "dmarc", "sender policy framework", "reverse dns",
                   "reverse lookup", "ptr record", "rdns", "reverse hostname",
                   "cannot find your hostname", "helo command rejected", "helo rejected",
                   "invalid helo", "bad helo",
                   # Haraka's helo.checks: "550 HELO host name invalid", "550 HELO
                   # host does not match rDNS", "550 HELO IP literal does not match
                   # your IP address", "550 HELO is dynamic", "550 That HELO not
                   # allowed here"; Haraka "550 HELO denied" / "550 EHLO denied".
                   "helo host", "helo ip literal", "helo is ", "helo not allowed",
                   "helo denied", "ehlo denied", "helo name", "helo hostname",
                   # Coremail "555 helohost error.", "556 remote ip check error."
                   # (the client IP against the MAIL FROM domain;
                   # blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "helohost", "remote ip check", "authentication information",
                   "unauthenticated email", "not pass authentication",
                   "sender is unauthenticated", "requires all senders to authenticate",
                   "authentication checks",
                   # Exchange Online 5.7.515 "doesn't meet the required
                   # authentication level"; Mimecast "Rejected by header based
                   # Anti-Spoofing policy", "Anti-Spoofing policy - Inbound not
                   # allowed"; Haraka "Spoofed MAIL FROM".
                   "authentication level", "anti-spoofing", "spoofed")),
    Rule(R.AUTH_CREDENTIALS, "text: authentication failed",
         contains=("authentication failed", "authentication unsuccessful",
                   "credentials invalid", "invalid credentials", "username and password",
                   "incorrect authentication", "auth failed", "authentication credentials",
                   "unauthenticated senders", "login failed", "invalid login",
                   # Gmail: "504 5.7.4 Unrecognized authentication type."
                   "unrecognized authentication type", "unsupported authentication",
                   "authentication mechanism not supported",
                   # spamdyke "504 Refused. Unknown authentication method." (spamdyke.h,
                   # github.com/chrisboulton/spamdyke).
                   "unknown authentication", "authentication method not",
                   "unsupported auth",
                   # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes"
                   # (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm):
                   # "550 Submitter failed to authenticate", "535 Incorrect authentication data".
                   "failed to authenticate", "incorrect authentication data",
                   # Gmail "501 5.5.2 Cannot Decode response." to AUTH (Google Workspace SMTP error
                   # reference (support.google.com/a/answer/3726730)); RFC 4954 §4: "501 5.5.2
                   # Cannot Base64-decode Client responses".
                   "cannot decode response", "base64-decode", "decode response")),
    # RFC 4954 §4: a 504 to AUTH is an authentication mechanism the server
    # does not know ("504 5.5.4 Unrecognized authentication type").
    Rule(R.AUTH_CREDENTIALS, "504 at AUTH: unrecognised authentication type (RFC 4954)",
         codes=(504,), stages=(Stage.AUTH,), tier=Tier.TEXT),
    Rule(R.RELAY_DENIED, "text: relaying denied",
         contains=("relay access denied", "relaying denied", "relay denied",
                   "relay not permitted", "not permitted to relay", "unable to relay",
                   "we do not relay", "relaying not allowed", "not allowed to relay",
                   "relaying disallowed", "relay prohibited", "authentication required",
                   "not authenticated to send", "must authenticate",
                   # qmail: "553 sorry, that domain isn't in my list of allowed
                   # rcpthosts (#5.7.1)" (qmail-smtpd.c).
                   "allowed rcpthosts",
                   # qmail's chkuser: "553 sorry, that domain isn't allowed to
                   # be relayed thru this MTA (#5.7.1)"; "554 Relay operation
                   # rejected".
                   "relayed thru", "be relayed through", "relay operation rejected",
                   "relay rejected", "relaying rejected", "relay refused", "relaying refused",
                   # hMailServer, when its IP range does not allow the relay:
                   # "550 Delivery is not allowed to this address."
                   # (source/Server/SMTP/SMTPConnection.cpp).
                   "delivery is not allowed to this address",
                   # Coremail "553 host denies relay.", "553 relay check local
                   # fail.", "553 relay check domain fail"
                   # (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "denies relay", "deny relay", "relay check", "no relaying",
                   "relaying is not allowed", "relay is not allowed",
                   # spamdyke "554 Refused. Authentication is required to send
                   # mail." (spamdyke.h, github.com/chrisboulton/spamdyke).
                   "authentication is required",
                   # smtpf (Barricade MX), "SMTP Replies" (snertsoft.com/smtp/smtpf/reply.html):
                   # "550 5.7.1 UUCP addressing denied #132" (source-routed and bang paths are
                   # relaying).
                   "uucp addressing", "source route", "percent hack")),
    # The same refusal in other words: spamdyke "554 Refused. Sending to
    # remote addresses (relaying) is not allowed." (spamdyke.h, github.com/chrisboulton/spamdyke).
    Rule(R.RELAY_DENIED, "text: relaying (is) not allowed / denied",
         contains=("relay",),
         regex=r"\brelay(?:ing)?\b\W{0,3}(?:is |are )?(?:not allowed|not permitted|denied|"
               r"refused|prohibited|rejected|disabled)"),
    Rule(R.RELAY_DENIED, "530 authentication required", codes=(530,), tier=Tier.TEXT),
    Rule(R.SENDING_QUOTA, "text: account sending quota",
         # Our own relay's hourly or daily allowance (Iridis mailRelay "451
         # HST-RTE: Hourly send rate exceeded, retry later"): a quota of the
         # account, not a receiver's rate limit on our IP.
         contains=("hourly send", "daily send", "hourly sending",
                   "daily message quota", "sending quota", "sending limit exceeded",
                   "daily sending limit", "credits exceeded", "daily limit",
                   "message quota exceeded", "relay limit exceeded", "quota for sending")),
    # RFC 821's text for 552 was "exceeded storage allocation", and RFC 821
    # servers send it when the RCPT limit is hit; RFC 5321 §4.5.3.1.10 says
    # to treat that 552 as temporary.  A 5.2.2 status (mailbox full) is
    # matched by its status rule before this one.
    Rule(R.TOO_MANY_RECIPIENTS, "552 at RCPT: too many recipients (RFC 5321 §4.5.3.1.10)",
         contains=("exceeded storage allocation",), codes=(552,), stages=(Stage.RCPT,),
         transient=True),
    Rule(R.MAILBOX_FULL, "text: mailbox full",
         contains=("mailbox full", "mailbox is full", "over quota", "quota exceeded",
                   "exceeded storage", "mailbox size limit", "mailfolder is full",
                   "disk quota", "out of storage", "storage quota", "mailbox has exceeded",
                   "user has exceeded", "mailbox size exceeded", "quota exceeded",
                   # qmail (vpopmail): "451 qq trouble in home directory" is what
                   # a recipient over its quota gets (a hosting provider's list of
                   # common replies, support.onesystems.ch).
                   "trouble in home directory",
                   # web.de, in the typical bounces that sitepackage.de lists (web.de, Lycos and
                   # others): "550 ... User has exhausted allowed storage space.", "550 ... User
                   # has too many messages on the server.".
                   "storage space", "exhausted allowed", "messages on the server",
                   "messages in the mailbox", "messages in mailbox",
                   # Yandex's list of other servers' texts: "552 Account is full",
                   # "Error writing message: Disk quota exceeded".
                   "account is full", "inbox is full", "box is full")),
    # Postfix anvil: "450 4.7.1 Error: too many recipients from <client>" is a
    # recipient *rate*, not a per-transaction limit.
    Rule(R.RATE_LIMITED, "text: too many recipients from this client",
         contains=("too many recipients from",)),
    # Postfix anvil "421 4.7.0 <host> Error: too many connections from <ip>",
    # Sendmail conncontrol "421 4.3.2 Too many open connections.", Exim
    # "421 Too many concurrent SMTP connections", Exchange "421 4.3.2 The
    # maximum number of concurrent server connections has exceeded a limit".
    # Connections per unit of time are a rate, not a count: "450 too frequent
    # connects from <ip>" (Cisco), "421 4.3.2 Connection rate limit exceeded."
    # (Sendmail ratecontrol), "... connections per minute".
    Rule(R.RATE_LIMITED, "text: connections per unit of time (a rate)",
         contains=("connection rate", "connections per second", "connections per minute",
                   "connections per hour", "connection attempts", "connection frequency",
                   "too frequent connect", "connecting too fast", "connects per")),
    # Threads are concurrent sessions: Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error
    # codes" (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm) "550
    # Exceeding outbound thread limit" (Exchange's "mailbox database thread limit" and "recipient
    # thread limit" are provider rules, before this one).
    Rule(R.TOO_MANY_CONNECTIONS, "text: a thread (concurrency) limit",
         contains=("thread limit",), transient=True),
    Rule(R.TOO_MANY_CONNECTIONS, "text: too many connections",
         contains=("too many connections", "too many concurrent", "connection limit",
                   "connections limit", "too many open connections",
                   "concurrent connections", "concurrent server connections",
                   "maximum number of connections", "max concurrent connections",
                   "too many sessions", "connection count limit", "too many simultaneous",
                   "simultaneous connections", "parallel connections", "maximum connections",
                   "max connections", "connection concurrency", "concurrency limit",
                   "sessions opened", "smtp sessions")),
    Rule(R.SESSION_LIMIT, "text: messages per connection",
         contains=("messages per connection", "message per connection",
                   "messages per session", "messages for this session",
                   "messages in this session", "mails per session",
                   "messages on this connection", "per connection reached",
                   # Exim: "421 too many messages in this connection" (smtp_in.c).
                   "messages in this connection", "messages per smtp session",
                   # Cisco Secure Email: "421 Exceeded allowable connection
                   # time, disconnecting." (the HAT's maximum session time).
                   "allowable connection time",
                   # Google Workspace SMTP error reference (support.google.com/a/answer/3726730):
                   # "421 4.7.0 Connection expired, try reconnecting.".
                   "connection expired")),
    # Gmail: "451 4.3.0 Multiple destination domains per transaction is
    # unsupported" and "452 4.5.3 ... try this recipient in a separate
    # transaction" (Gmail SMTP error reference): split the transaction.
    # Cisco Secure Email's HAT throttling and others: "452 Too many recipients
    # received this hour (throttled)" (listed in SendGrid's "SMTP errors and
    # troubleshooting", docs.sendgrid.com) is a recipient *rate*, not a
    # per-transaction limit: splitting the transaction does not help.
    Rule(R.RATE_LIMITED, "text: too many recipients this hour (a rate)",
         contains=("recipients received this hour", "recipients per hour",
                   "too many recipients this hour")),
    Rule(R.TOO_MANY_RECIPIENTS, "text: too many recipients",
         contains=("too many recipients", "recipient limit", "too many rcpt",
                   "maximum number of recipients", "multiple destination domains",
                   "in a separate transaction",
                   # Haraka: "450 Split transaction, retry soon".
                   "split transaction",
                   # Coremail "451 out of allow RCPT numbers."
                   # (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "rcpt numbers", "rcpt number", "rcpt limit", "max rcpt",
                   "number of rcpt")),
    # Postfix anvil: "450 4.7.1 Error: too much mail from <client>" (not
    # "552 Too much mail data", which is about size).
    Rule(R.RATE_LIMITED, "text: rate limit",
         contains=("rate limit", "rate-limit", "ratelimit", "too much mail from",
                   "too many messages", "sending too fast", "too fast",
                   "receiving mail at a rate", "receiving mail too quickly", "throttl",
                   "slow down", "exceeded the rate", "rate exceeded", "message rate",
                   "connection rate", "frequency limit", "too many requests",
                   "sending rate", "too frequent",
                   # Postfix anvil: "450 4.7.1 Error: too many AUTH commands from
                   # <ip>", "421 4.7.0 <host> Error: too many new TLS sessions from
                   # <ip>" (smtpd.c); Outlook.com RP-001..003 "We have limits for
                   # how many messages can be sent per hour and per day".
                   "too many auth commands", "too many new tls sessions", "rate overlimit",
                   "messages can be sent per hour", "messages per hour", "messages per minute",
                   "limits for how many messages",
                   # "550 5.7.1 ... Since you sent too many e-mails, you are not
                   # allowed to send more e-mails within 24 hours" (a Korean
                   # portal, puffinknight.tistory.com/102): a 5xx that lifts.
                   "too many e-mails", "too many emails", "too many mails",
                   "too quickly",
                   # Exchange's receive connector: "421 4.4.2 Message submission
                   # rate for this client has exceeded the configured limit".
                   "submission rate",
                   # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and
                   # SMTP errors in Exchange Online"): "550 5.7.508 Access denied, [ip] has
                   # exceeded permitted limits within /64 range" (a volume from an IPv6 range).
                   "exceeded permitted limits", "permitted limits within",
                   # Rackspace "450 4.2.1 <x>: Mailbox received too much email in a
                   # short period of time (G30)" (smtp.codes/rackspace).
                   "too much email", "short period of time")),
    # "421 4.7.0 Try again later": a policy (x.7) status with no other words
    # is how most servers say "you are sending too fast".
    Rule(R.RATE_LIMITED, "text: try again later under a 4.7.x policy status", status="4.7.",
         contains=("try again later", "try later", "retry later", "please try again")),
    # RFC 5321 §4.2.2: "450 Requested mail action not taken: mailbox
    # unavailable (e.g., mailbox busy or temporarily blocked for policy
    # reasons)".  A 4xx with this text states no cause: retry, by the class.
    Rule(R.UNCLASSIFIED, "4xx mailbox unavailable: a deferral with no stated cause",
         contains=("mailbox unavailable", "mailbox temporarily unavailable", "mailbox busy",
                   "mailbox is busy"),
         codes=_DEFER),
    # Exim's sender verification folds the callout's answer into its reply
    # ("550 Verification failed for <x> / 550 Unrouteable address / 550 Sender
    # verify failed", acl.c): it is about our sender, whatever it quotes.
    Rule(R.SENDER_REJECTED, "text: sender verification failed",
         contains=("sender verify failed", "sender verification failed")),
    # A name under an unknown or reserved top-level domain: the connecting
    # host's (its HELO or reverse DNS) before MAIL, the sender's at MAIL; smtpf (Barricade MX),
    # "SMTP Replies" (snertsoft.com/smtp/smtpf/reply.html): "550 5.7.1 host <h> [<ip>] from unknown
    # TLD #122", "... from RFC2606 reserved domain #121", "550 5.7.1 sender <x> from unknown TLD
    # #129".
    Rule(R.AUTH_POLICY, "text: the client's name is under an unknown or reserved TLD",
         contains=("unknown tld", "reserved domain"), stages=(Stage.CONNECT, Stage.EHLO)),
    Rule(R.SENDER_REJECTED, "text: the sender's domain is under an unknown or reserved TLD",
         contains=("unknown tld", "reserved domain"), stages=(Stage.MAIL,)),
    # A domain name that a HELO/EHLO reply complains of is the greeting's
    # argument, not a destination: Exchange "501 5.5.4 Invalid domain name",
    # "501 5.0.0 HELO / EHLO requires domain address" (Exchange Online NDR list
    # (learn.microsoft.com, "Email non-delivery reports and SMTP errors in Exchange Online")).
    # Gmail: "501 5.5.4 Empty HELO/EHLO argument not allowed, closing
    # connection.", "501 5.5.4 HELO/EHLO argument is invalid" (Google Workspace SMTP error
    # reference (support.google.com/a/answer/3726730)).
    Rule(R.PROTOCOL_ERROR, "text at EHLO: the greeting's domain argument",
         contains=("invalid domain name", "requires domain", "domain address",
                   "invalid domain", "argument"),
         stages=(Stage.EHLO,)),
    # The sender's domain, named as such, before the domain words: spamdyke
    # "421 Refused. The domain of your sender address has no mail exchanger
    # (MX)." (spamdyke.h, github.com/chrisboulton/spamdyke).
    Rule(R.SENDER_REJECTED, "text: the sender's domain",
         contains=("domain of your sender", "domain of the sender", "domain of sender",
                   "sender's domain", "your sender domain", "your sender address",
                   # Iridis mailRelay "550 SND-VFY: Sender domain does not exist".
                   "sender domain")),
    # Before the network words: "550 Host unknown (Authoritative answer from
    # name server)" (Sendmail) is about the domain, not the network.
    Rule(R.DOMAIN_UNKNOWN, "text: domain does not exist",
         contains=("host unknown", "unknown host", "domain not found", "no such domain",
                   "domain does not exist", "unrouteable address", "unroutable", "null mx",
                   "does not accept mail", "domain is not valid", "invalid domain",
                   "unknown domain", "no mx record",
                   # Exim, for a null MX or SRV record (RFC 7505):
                   # "an MX or SRV record indicated no SMTP service".
                   "indicated no smtp service",
                   # qmail-remote: "Sorry, I couldn't find any host named x.
                   # (#5.1.2)", "Sorry, I couldn't find a mail exchanger or IP
                   # address. (#5.4.4)".
                   "couldn't find any host", "couldn't find a mail exchanger",
                   # Exchange: "554 5.4.4 SMTPSEND.DNS.NonExistentDomain;
                   # nonexistent domain" (also inside "451 4.4.0 DNS query
                   # failed. The error was: ...", where the 4xx keeps it
                   # transient).
                   "nonexistent domain", "non-existent domain", "nonexistentdomain",
                   # Yandex's list: "550 Host or domain name not found".
                   "domain name not found", "host or domain name")),
    # A looping message is a routing failure (RFC 3463 x.4.6 "routing loop
    # detected"): Postfix "554 5.4.0 Error: too many hops" (cleanup_strerror.c),
    # Exchange "554 5.4.14 Hop count exceeded - possible mail loop", Haraka
    # "550 Too many received headers - possible mail loop" (connection.js).
    # Permanent in a 5xx: resending the same message loops again.
    # Coremail "552 looping message." (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
    Rule(R.CONNECTION_ERROR, "text: mail loop (5xx)",
         contains=("too many hops", "hop count exceeded", "mail loop", "routing loop",
                   "too many received headers", "looping", "loop detected",
                   "loop detection"),
         codes=_ANY_5XX, transient=False),
    Rule(R.CONNECTION_ERROR, "text: mail loop",
         contains=("too many hops", "hop count exceeded", "mail loop", "routing loop",
                   "too many received headers", "looping", "loop detected",
                   # EveryCloud's gateway reason codes (support.everycloudtech.com, "Workspace
                   # reason codes"): "554 5.5.6 loop detection".
                   "loop detection")),
    # Before "server busy": Exim's "421 <host>: SMTP command timeout -
    # closing connection" is about the connection, not the server's load.
    # Exchange "421 4.4.2 Connection dropped due to SocketError".
    Rule(R.CONNECTION_ERROR, "text: timeout or network failure",
         contains=("timeout", "timed out", "connection reset", "connection refused",
                   "lost connection", "connection lost", "dns failure", "dns lookup",
                   "dns query", "name server", "network is unreachable", "no route to host",
                   "connection dropped", "socketerror", "socket error",
                   # qmail-remote "Sorry, I wasn't able to establish an SMTP
                   # connection. (#4.4.1)"; Sendmail "451 4.4.1 reply: read error
                   # from <host>".
                   "able to establish", "read error", "dns query failed",
                   # Exim "421 Lost incoming connection" (smtp_in.c), Sendmail
                   # "421 4.4.1 <host> Lost input channel from <client>".
                   "lost incoming connection", "lost input channel",
                   # spamdyke "454 Failed to negotiate TLS connection." (spamdyke.h,
                   # github.com/chrisboulton/spamdyke).
                   "negotiate tls", "tls negotiation", "tls handshake", "ssl handshake",
                   "handshake failed", "handshake failure",
                   # Exim (src/src/smtp_in.c, receive.c, verify.c, configure.default): "451 Error
                   # while reading input data".
                   "reading input",
                   # Mimecast, "Email Security Cloud Gateway: Mimecast SMTP error codes"
                   # (community.mimecast.com; texts as collected in sisimai's Rhost/Mimecast.pm):
                   # "451 Message ended early".
                   "ended early", "ended prematurely", "premature end")),
    Rule(R.SERVER_BUSY, "text: a 4xx for a temporary error on the server's side",
         contains=_SERVER_TROUBLE_WEAK, codes=_TEMP_CODES),
    # A busy or unavailable server is transient (taxonomy.py), but "554
    # Service unavailable" with nothing more is a 5xx that states no cause:
    # its class decides, unless the text itself says to come back later.
    Rule(R.SERVER_BUSY, "text: 5xx that says to try again later",
         contains=_LATER_WORDS, codes=_PERMANENT),
    # RFC 5321 §3.1: a 554 *greeting* is "no SMTP service here" for this
    # client, whatever words say the service is unavailable: Exim "554 SMTP
    # service not available" (smtp_in.c, host_reject_connection).
    Rule(R.BLOCKLISTED, "554 greeting that says the service is unavailable (RFC 5321 §3.1)",
         contains=("service not available", "service unavailable", "not available"),
         codes=(554,), stages=(Stage.CONNECT,)),
    Rule(R.SERVER_BUSY, "text: server busy or unavailable in a 5xx (permanent by its class)",
         contains=_BUSY_WORDS, codes=_ANY_5XX, transient=False),
    Rule(R.SERVER_BUSY, "text: server busy or unavailable", contains=_BUSY_WORDS),
    Rule(R.RECIPIENT_UNKNOWN, "text: no such recipient",
         contains=("user unknown", "unknown user", "no such user", "mailbox not found",
                   "does not exist", "no mailbox", "recipient not found",
                   "unknown recipient", "invalid recipient", "recipient unknown",
                   "user not found", "no such recipient", "not a valid mailbox",
                   "address unknown", "no such mailbox", "mailbox unavailable",
                   "unknown address", "address not found", "no such account",
                   "invalid mailbox", "mailbox does not", "recipient rejected",
                   "not our customer", "user doesn't exist", "account does not exist",
                   "user not exist", "marked as invalid", "address is invalid",
                   # Baruwa (an Exim-based gateway): "Recipient verification
                   # failed", "The email address does not exist".
                   "recipient verification failed", "recipient verify failed",
                   # Lotus Domino: "User <x> not listed in Domino Directory",
                   # "User not listed in public Name & Address Book".
                   "not listed in domino directory", "not listed in public name",
                   # the typical bounces that sitepackage.de lists (web.de, Lycos and others): "550
                   # Unknown local part <x> in <x@web.de>", "550 Recipient verification problem".
                   "unknown local part", "unknown local-part", "recipient verification")),
    # RFC 5321 §4.2.2: "553 Requested action not taken: mailbox name not
    # allowed" is about the address it answers: the recipient at RCPT, the
    # sender at MAIL.
    # Exim: "501 <x>: recipient address must contain a domain" (smtp_in.c).
    # Postfix "504 5.5.2 <bob>: Recipient address rejected: need
    # fully-qualified address" (smtpd_check.c); spamdyke "554 Improper
    # recipient address. Try supplying a domain name." (spamdyke.h,
    # github.com/chrisboulton/spamdyke).
    Rule(R.RECIPIENT_UNKNOWN, "553 text at RCPT: mailbox name not allowed",
         contains=_ADDRESS_FORM_WORDS, stages=(Stage.RCPT,)),
    Rule(R.SENDER_REJECTED, "553 text at MAIL: mailbox name not allowed",
         contains=_ADDRESS_FORM_WORDS, stages=(Stage.MAIL,)),
    Rule(R.MAILBOX_DISABLED, "text: mailbox disabled",
         contains=("account disabled", "account has been disabled", "mailbox disabled",
                   "mailbox is disabled", "account is disabled", "account inactive",
                   "account is inactive", "mailbox is inactive", "inactive account",
                   "account suspended", "account has been suspended", "deactivated",
                   "account is not active", "mailbox inactive", "disabled account",
                   # Coremail "550 user is locked."
                   # (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "user is locked", "account is locked", "account locked",
                   "mailbox is locked", "user locked",
                   # Exchange Online NDR list (learn.microsoft.com, "Email non-delivery reports and
                   # SMTP errors in Exchange Online"): "550 5.7.505 Access denied, banned
                   # recipient".
                   "banned recipient",
                   # Lycos, in the typical bounces that sitepackage.de lists (web.de, Lycos and
                   # others): "550 <x>: Recipient address rejected: Account Closed".
                   "account closed", "account has been closed", "account is closed",
                   "mailbox closed",
                   # AT&T "550 [suspend] Mailbox currently suspended" (att.net).
                   "mailbox currently suspended", "mailbox suspended", "mailbox is suspended")),
    # After the recipient and mailbox words: a bounce that folds "550 Unknown
    # user <x> 503 Bad sequence of commands" is about the user; the 503
    # only followed the refusal.
    Rule(R.PROTOCOL_ERROR, "text: protocol or syntax error",
         contains=("too many errors", "syntax error", "bad sequence of commands",
                   "command unrecognized", "unrecognized command", "command not recognized",
                   "protocol violation", "protocol error", "improper use of smtp",
                   "pipelining", "line too long", "too many unauthenticated commands",
                   "command not implemented", "invalid command", "malformed smtp response",
                   "malformed response",
                   # Exim "554 SMTP synchronization error", Postfix "554 5.5.0
                   # Error: SMTP protocol synchronization".
                   "synchronization error", "protocol synchronization",
                   # Talking before the greeting: Haraka's early_talker "554 You
                   # talk too soon" (haraka-plugin-early_talker).
                   "talk too soon", "talking too soon", "before greeting",
                   # spamdyke "554 Refused. You are not following the SMTP
                   # protocol." (an early talker), "554 Refused. You must specify
                   # at least one valid recipient." (spamdyke.h, github.com/chrisboulton/spamdyke).
                   "not following the smtp", "smtp protocol violation",
                   # Exim (src/src/smtp_in.c, receive.c, verify.c, configure.default): "501 NUL
                   # characters are not allowed in SMTP commands", "533 no support for
                   # internationalised mailbox name", "553 Initial data not expected", "501
                   # Unexpected argument data".
                   "in smtp commands", "nul character", "internationalised mailbox",
                   "internationalized mailbox", "smtputf8", "initial data not expected",
                   "unexpected argument",
                   "at least one valid recipient",
                   # postscreen "521 5.7.0 Error: I can break rules, too.
                   # Goodbye."; Postfix "553 5.6.7 Must declare SMTPUTF8 to send
                   # unicode address" (smtpd.c).
                   "break rules", "declare smtputf8",
                   # hMailServer: "550 Invalid syntax. Syntax should be MAIL
                   # FROM:<mailbox@domain>[crlf]".
                   "invalid syntax")),
    Rule(R.SENDER_REJECTED, "text: sender rejected",
         contains=("sender address rejected", "sender rejected", "sender verify failed",
                   "sender domain", "not verified", "sender not allowed", "invalid sender",
                   "sender is not", "from address", "envelope sender", "sender denied",
                   "unverified sender", "sender identity",
                   # Iridis mailRelay "550 MSG-DOM: Envelope-From (<x>) does not use
                   # a domain authorised for relay".
                   "envelope-from", "envelope from",
                   # Coremail "552 mail from invalid.", "553 host denies the
                   # sender.", "554 sender is unvalidated."
                   # (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "mail from invalid", "invalid mail from", "bad mail from",
                   "denies the sender", "sender is unvalidated", "unvalidated sender")),
    Rule(R.MESSAGE_TOO_LARGE, "text: message too large",
         contains=("too large", "too big", "size exceeds", "exceeds size", "message size",
                   "mail size limit",
                   "message length exceeds", "exceeds the maximum size",
                   "message file too big", "size exceeded", "maximum email size",
                   "message size limit",
                   # Coremail "552 message is too long.", "554 attachment is too
                   # long." (blog.sina.com.cn/s/blog_8dc13ec50101fxxr.html).
                   "message is too long", "message too long", "attachment is too",
                   "attachment too large", "attachment size", "attachments too large")),
    Rule(R.CONTENT_REJECTED, "text: malformed message",
         contains=("missing from", "invalid from", "rfc 5322", "rfc5322", "rfc 2822",
                   "rfc2822", "rfc 822", "not rfc compliant", "malformed message",
                   "message is malformed", "malformed header", "malformed mime",
                   "multiple from", "duplicate header", "header error", "invalid header",
                   "illegal header", "bare lf", "8-bit", "8bit", "message-id",
                   "improper header", "invalid message")),
    Rule(R.POLICY_REJECTED, "text: rejected by local policy",
         contains=("policy", "not authorized", "not authorised", "access denied", "banned",
                   "prohibited", "administrative", "blocked", "refused", "denied",
                   "not allowed", "not permitted", "rejected")),
)

# Weak rules on codes alone: tried only when no text rule matched.
_FALLBACK = (
    Rule(R.DOMAIN_UNKNOWN, "521/556: does not accept mail (RFC 7504)", codes=(521, 556),
         tier=Tier.FALLBACK),
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
    # RFC 3463 x.3.2 "system not accepting network messages" (load,
    # maintenance; postscreen's "421 4.3.2 All server ports are busy").  A
    # fallback, because Sendmail sends "421 4.3.2 Too many open connections."
    # (conncontrol) and "421 4.3.2 Connection rate limit exceeded."
    # (ratecontrol), and those texts say more than the status.
    Rule(R.SERVER_BUSY, "4.3.2 system not accepting network messages", status="4.3.2",
         tier=Tier.FALLBACK),
    # RFC 3463 (and OpenSMTPD, which sends its descriptions: usr.sbin/smtpd/esc.c): x.4.1 "No
    # answer from host", x.4.2 "Bad connection", x.4.3 "Directory server failure": fallbacks, so a
    # text that names its cause ("421 4.4.2 Message submission rate ...") wins, and before the bare
    # 421.
    Rule(R.CONNECTION_ERROR, "x.4.1 no answer from host", status="x.4.1", tier=Tier.FALLBACK),
    Rule(R.CONNECTION_ERROR, "x.4.2 bad connection", status="x.4.2", tier=Tier.FALLBACK),
    Rule(R.SERVER_BUSY, "x.4.3 directory server failure", status="x.4.3", tier=Tier.FALLBACK),
    # RFC 3463 x.4.5 "mail system congestion": a fallback too, so "421 4.4.5
    # Too many connections per minute" is the rate it says it is.
    Rule(R.SERVER_BUSY, "x.4.5 mail system congestion", status="x.4.5", tier=Tier.FALLBACK),
    # RFC 5321 §3.8, §4.2.2: 421 "Service not available, closing
    # transmission channel" with no telling text.
    Rule(R.SERVER_BUSY, "421 service not available", codes=(421,), tier=Tier.FALLBACK),
)
# fmt: on

GENERIC_RULES: tuple[Rule, ...] = (*_STATUS, *_CODE, *_TEXT, *_FALLBACK)
