"""Provider rules, one documented reply (at least) for each.

The replies are quoted from each provider's error reference (cited in
src/resilient_smtp/_rules/_providers.py) or from KumoMTA's shaping rules.
A few are the status alone ("421 4.7.27 - gsmtp"): that is what is left when
a relay or a bounce cuts the text, and the host-bound status rules exist for
it.  ``test_every_provider_rule_fires`` keeps the table free of dead rules
(a rule that can never match, such as one that looks for a leading status in
the text after Reply.parse has taken it off).
"""

from __future__ import annotations

import pytest

from resilient_smtp import Classifier, Reason, Stage, classify, default_classifier
from resilient_smtp._classify.rules.providers import PROVIDER_RULES

R = Reason
GMAIL = "gmail-smtp-in.l.google.com"
RELAY = "smtp-relay.gmail.com"
OUTLOOK = "example-com.mail.protection.outlook.com"
HOTMAIL = "hotmail-com.olc.protection.outlook.com"
YAHOO = "mta6.am0.yahoodns.net"
ICLOUD = "mx01.mail.icloud.com"
SES = "email-smtp.us-east-1.amazonaws.com"
SENDGRID = "smtp.sendgrid.net"
MAILGUN = "smtp.mailgun.org"
ZOHO = "smtp.zoho.com"
GMX = "mx00.emig.gmx.net"
WEBDE = "mx-ha02.web.de"
COMCAST = "mx1.comcast.net"
QQ = "mx3.qq.com"

# (reply, host, stage, reason, transient)
EXAMPLES: list[tuple[str, str | None, Stage | None, Reason, bool]] = [
    # --- Gmail ---------------------------------------------------------------
    (
        "421 4.3.0 Temporary System Problem.  Try again later (10). - gsmtp",
        GMAIL,
        None,
        R.SERVER_BUSY,
        True,
    ),
    (
        "451 4.3.0 Mail server temporarily rejected message. - gsmtp",
        GMAIL,
        Stage.END_OF_DATA,
        R.SERVER_BUSY,
        True,
    ),
    (
        "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please\r\n"
        "450 4.2.1 resend your message at a later time. - gsmtp",
        GMAIL,
        Stage.RCPT,
        R.RATE_LIMITED,
        True,
    ),
    (
        "550-5.7.1 [192.0.2.1] Our system has detected an unusual rate of\r\n"
        "550-5.7.1 unsolicited mail originating from your IP address. To protect our\r\n"
        "550 5.7.1 users from spam, mail sent from your IP address has been blocked.",
        GMAIL,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of\r\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
        "421 4.7.28 users from spam, mail sent from your IP address has been temporarily rate "
        "limited.",
        GMAIL,
        Stage.RCPT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421-4.7.0 [192.0.2.1] Our system has detected that this message is likely\r\n"
        "421-4.7.0 unsolicited mail. To reduce the amount of spam sent to Gmail, this\r\n"
        "421 4.7.0 message has been blocked.",
        GMAIL,
        Stage.END_OF_DATA,
        R.SPAM_CONTENT,
        True,
    ),
    (
        "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely\r\n"
        "550-5.7.1 unsolicited mail. To reduce the amount of spam sent to Gmail, this\r\n"
        "550 5.7.1 message has been blocked.",
        GMAIL,
        Stage.END_OF_DATA,
        R.SPAM_CONTENT,
        False,
    ),
    (
        "552-5.7.0 This message was blocked because its content presents a potential\r\n"
        "552 5.7.0 security issue.",
        GMAIL,
        Stage.END_OF_DATA,
        R.SPAM_CONTENT,
        False,
    ),
    (
        "550-5.7.26 The MAIL FROM domain [example.com] has an SPF record with a hard fail\r\n"
        "550-5.7.26 policy (-all) but it fails to pass SPF checks with the ip: [192.0.2.1]. To\r\n"
        "550 5.7.26 best protect our users from spam and phishing, the message has been blocked.",
        GMAIL,
        Stage.END_OF_DATA,
        R.AUTH_POLICY,
        False,
    ),
    (
        "550-5.7.26 This message does not have authentication information or fails to\r\n"
        "550 5.7.26 pass authentication checks. To best protect our users from spam, the "
        "message has been blocked.",
        GMAIL,
        Stage.END_OF_DATA,
        R.AUTH_POLICY,
        False,
    ),
    (
        "550-5.7.1 [192.0.2.1] This message is not RFC 5322 compliant. There are multiple\r\n"
        "550 5.7.1 Subject headers. To reduce the amount of spam sent to Gmail, this message "
        "has been blocked.",
        GMAIL,
        Stage.END_OF_DATA,
        R.CONTENT_REJECTED,
        False,
    ),
    (
        "550 5.7.1 Messages with multiple addresses in From: header are not accepted.",
        GMAIL,
        Stage.END_OF_DATA,
        R.CONTENT_REJECTED,
        False,
    ),
    (
        "421-4.7.29 Your email has been rate limited because this message wasn't sent over a\r\n"
        "421 4.7.29 TLS connection.",
        GMAIL,
        Stage.END_OF_DATA,
        R.TLS_REQUIRED,
        True,
    ),
    (
        "421-4.7.27 Your email has been rate limited because SPF authentication didn't pass\r\n"
        "421 4.7.27 for this message.",
        GMAIL,
        Stage.END_OF_DATA,
        R.AUTH_POLICY,
        True,
    ),
    (
        "550-5.7.32 Your email has been blocked because the From: header (RFC5322) in this\r\n"
        "550 5.7.32 message isn't aligned with either the authenticated SPF or DKIM "
        "organizational domain.",
        GMAIL,
        Stage.END_OF_DATA,
        R.AUTH_POLICY,
        False,
    ),
    # The status alone, each with Gmail's meaning (not IANA's).
    ("421 4.7.27 - gsmtp", GMAIL, Stage.END_OF_DATA, R.AUTH_POLICY, True),
    ("421 4.7.30 - gsmtp", GMAIL, Stage.END_OF_DATA, R.AUTH_POLICY, True),
    ("550 5.7.32 - gsmtp", GMAIL, Stage.END_OF_DATA, R.AUTH_POLICY, False),
    ("421 4.7.29 - gsmtp", GMAIL, Stage.END_OF_DATA, R.TLS_REQUIRED, True),
    (
        "550-5.4.5 Daily user sending limit exceeded. For more information on Gmail\r\n"
        "550 5.4.5 sending limits go to https://support.google.com/a/answer/166852",
        RELAY,
        Stage.MAIL,
        R.SENDING_QUOTA,
        True,
    ),
    (
        "450 4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error.",
        RELAY,
        Stage.MAIL,
        R.RATE_LIMITED,
        True,
    ),
    ("550 5.7.1 Email quota exceeded.", RELAY, Stage.MAIL, R.SENDING_QUOTA, True),
    # From the MX the same words are the recipient's mailbox.
    ("550 5.7.1 Email quota exceeded.", "gmail-smtp-in.l.google.com", Stage.RCPT,
     R.MAILBOX_FULL, False),
    # The recipient domain's IP allowlist: its policy ("check if your IP
    # address is allowed to send emails to the receiver").
    (
        "421 4.7.0 IP not in whitelist for RCPT domain, closing connection.",
        RELAY,
        Stage.RCPT,
        R.POLICY_REJECTED,
        True,
    ),
    (
        "550 5.7.1 Invalid credentials for relay [192.0.2.1]. The IP address you've registered "
        "in your G Suite SMTP Relay service doesn't match domain of the account this email is "
        "being sent from.",
        RELAY,
        Stage.MAIL,
        R.RELAY_DENIED,
        False,
    ),
    (
        "550-5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to\r\n"
        "550-5.7.1 send email directly to our servers. Please use the SMTP relay at your\r\n"
        "550 5.7.1 service provider instead.",
        GMAIL,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "454 4.7.0 Too many login attempts, please try again later.",
        "smtp.gmail.com",
        Stage.AUTH,
        R.RATE_LIMITED,
        True,
    ),
    (
        "534-5.7.9 Application-specific password required. Learn more at\r\n"
        "534 5.7.9 https://support.google.com/mail/?p=InvalidSecondFactor",
        "smtp.gmail.com",
        Stage.AUTH,
        R.AUTH_CREDENTIALS,
        False,
    ),
    (
        "534-5.7.14 <https://accounts.google.com/signin/continue> Please log in with\r\n"
        "534-5.7.14 your web browser and then try again.",
        "smtp.gmail.com",
        Stage.AUTH,
        R.AUTH_CREDENTIALS,
        False,
    ),
    (
        "550-5.2.1 The email account that you tried to reach is disabled. Learn more at\r\n"
        "550 5.2.1 https://support.google.com/mail/?p=DisabledUser",
        GMAIL,
        Stage.RCPT,
        R.MAILBOX_DISABLED,
        False,
    ),
    (
        "550 5.2.1 The email account that you tried to reach is inactive.",
        GMAIL,
        Stage.RCPT,
        R.MAILBOX_DISABLED,
        False,
    ),
    (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550 5.1.1 double-checking the recipient's email address for typos.",
        GMAIL,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    (
        "550-5.7.1 [192.0.2.1] Messages missing a valid messageId header are not\r\n"
        "550 5.7.1 accepted.",
        GMAIL,
        Stage.END_OF_DATA,
        R.CONTENT_REJECTED,
        False,
    ),
    (
        "454 4.5.0 SMTP protocol violation, no commands allowed to pipeline after STARTTLS",
        GMAIL,
        Stage.STARTTLS,
        R.PROTOCOL_ERROR,
        True,
    ),
    ("454 5.5.1 STARTTLS may not be repeated.", GMAIL, Stage.STARTTLS, R.PROTOCOL_ERROR, True),
    (
        "451-4.3.0 Multiple destination domains per transaction is unsupported. Please\r\n"
        "451 4.3.0 try again.",
        RELAY,
        Stage.RCPT,
        R.TOO_MANY_RECIPIENTS,
        True,
    ),
    # --- Microsoft 365 / Outlook.com --------------------------------------------
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150). "
        "You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        HOTMAIL,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this "
        "list please visit https://sender.office.com/ and follow the directions.",
        OUTLOOK,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "550 5.7.511 Access denied, banned sender[192.0.2.1]. To request removal from this list "
        "please forward this message to delist@microsoft.com.",
        OUTLOOK,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        OUTLOOK,
        Stage.RCPT,
        R.BLOCKLISTED,
        False,
    ),
    # The recipient domain's own IP block list: its policy, as Mimecast's
    # Blocked Senders are (not a public block list the sender could delist from).
    (
        "550 5.7.513 Service unavailable, Client host [192.0.2.1] blocked by example.com using "
        "Customer Block list (AS16012607)",
        OUTLOOK,
        Stage.RCPT,
        R.POLICY_REJECTED,
        False,
    ),
    (
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains.",
        "eur01.outbound.protection.outlook.com",
        Stage.MAIL,
        R.SENDER_REJECTED,
        False,
    ),
    (
        "550 5.7.705 Access denied, tenant has exceeded threshold.",
        "eur01.outbound.protection.outlook.com",
        Stage.MAIL,
        R.BLOCKLISTED,
        False,
    ),
    (
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
        "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        HOTMAIL,
        Stage.RCPT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "451 4.7.650 (S775) [DM6NAM11FT005.eop-nam11.prod.protection.outlook.com]",
        HOTMAIL,
        Stage.RCPT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "451 4.7.651 (S775) [DM6NAM11FT005.eop-nam11.prod.protection.outlook.com]",
        HOTMAIL,
        Stage.RCPT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    # 4.7.652 is "The mail server [ip] has exceeded the maximum number of
    # connections. (S3115)": a connection count (see providers.py).
    (
        "451 4.7.652 (S775) [DM6NAM11FT005.eop-nam11.prod.protection.outlook.com]",
        HOTMAIL,
        Stage.RCPT,
        R.TOO_MANY_CONNECTIONS,
        True,
    ),
    (
        "421 4.7.653 [DM6NAM11FT005.eop-nam11.prod.protection.outlook.com]",
        HOTMAIL,
        Stage.MAIL,
        R.SESSION_LIMIT,
        True,
    ),
    (
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714) "
        "[VI1EUR04FT036.eop-eur04.prod.protection.outlook.com]",
        HOTMAIL,
        Stage.RCPT,
        R.RATE_LIMITED,
        True,
    ),
    (
        "451 4.7.500 Access denied, please try again later. For more information please go to "
        "http://go.microsoft.com/fwlink/?LinkId=526653. (AS843)",
        OUTLOOK,
        Stage.RCPT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421 4.3.2 Connection refused, exceed max concurrent connections. IB007",
        OUTLOOK,
        None,
        R.TOO_MANY_CONNECTIONS,
        True,
    ),
    (
        "550 5.2.121 Recipient's per hour message receive limit from specific sender exceeded.",
        OUTLOOK,
        Stage.RCPT,
        R.RATE_LIMITED,
        True,
    ),
    (
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
        "process message due to a permanent exception with message Cannot submit message.",
        "smtp.office365.com",
        Stage.END_OF_DATA,
        R.SENDING_QUOTA,
        True,
    ),
    (
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied;"
        " Failed to process message due to a permanent exception with message Cannot submit "
        "message.",
        "smtp.office365.com",
        Stage.END_OF_DATA,
        R.SENDER_REJECTED,
        False,
    ),
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        OUTLOOK,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    ("550 4.4.7 QUEUE.Expired; message expired", "smtp.office365.com", None, R.EXPIRED, False),
    (
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
        "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
        "smtp.office365.com",
        Stage.AUTH,
        R.AUTH_CREDENTIALS,
        False,
    ),
    (
        "530 5.7.57 Client not authenticated to send mail.",
        "smtp.office365.com",
        Stage.MAIL,
        R.RELAY_DENIED,
        False,
    ),
    (
        "Remote Server returned '530 5.7.57 SMTP; Client was not authenticated to send anonymous "
        "mail during MAIL FROM'",
        None,
        None,
        R.RELAY_DENIED,
        False,
    ),
    (
        "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to "
        "support TLS 1.2. Visit https://aka.ms/smtp_auth_tls.",
        "smtp.office365.com",
        Stage.EHLO,
        R.TLS_REQUIRED,
        True,
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        OUTLOOK,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    (
        "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
        HOTMAIL,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    # --- Yahoo / AOL -------------------------------------------------------------
    (
        "421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying "
        "will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        None,
        R.BLOCKLISTED,
        True,
    ),
    (
        "421 4.7.1 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying "
        "will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        None,
        R.BLOCKLISTED,
        True,
    ),
    (
        "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in "
        "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        Stage.CONNECT,
        R.BLOCKLISTED,
        False,
    ),
    (
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
        "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        None,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421 4.7.0 [GL01] Message from (192.0.2.1) temporarily deferred - 4.16.50. Please refer "
        "to https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        Stage.END_OF_DATA,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421 Message from (192.0.2.1) temporarily deferred - 4.16.50. Please refer to "
        "https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        Stage.END_OF_DATA,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421 Max message per connection reached, closing transmission channel",
        YAHOO,
        Stage.MAIL,
        R.SESSION_LIMIT,
        True,
    ),
    (
        "451 Message temporarily deferred due to unresolvable RFC.5321 from domain; see "
        "https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        Stage.MAIL,
        R.SENDER_REJECTED,
        True,
    ),
    (
        "552 1 Requested mail action aborted, mailbox not found",
        YAHOO,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account (user@yahoo.com) "
        "[0] - mta1001.mail.ne1.yahoo.com",
        None,
        Stage.END_OF_DATA,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    (
        "554 5.7.9 Message not accepted for policy reasons.  See "
        "https://postmaster.yahooinc.com/error-codes",
        YAHOO,
        Stage.END_OF_DATA,
        R.POLICY_REJECTED,
        False,
    ),
    (
        "554 30 Sorry, your message to user@yahoo.com cannot be delivered.  This mailbox is "
        "disabled (554.30).",
        YAHOO,
        Stage.RCPT,
        R.MAILBOX_DISABLED,
        False,
    ),
    # --- Apple iCloud ---------------------------------------------------------------
    (
        "554 5.7.1 [CS01] Message rejected due to local policy. Please visit "
        "https://support.apple.com/en-us/HT204137",
        ICLOUD,
        Stage.END_OF_DATA,
        R.POLICY_REJECTED,
        False,
    ),
    (
        "[CS01] Message rejected due to local policy. Please visit "
        "https://support.apple.com/en-us/HT204137",
        ICLOUD,
        None,
        R.POLICY_REJECTED,
        False,
    ),
    (
        "421 4.7.0 [BS02] Temporary server error. Please try again later",
        ICLOUD,
        None,
        R.SERVER_BUSY,
        True,
    ),
    ("450 4.7.0 [HCM1] Message deferred", ICLOUD, Stage.RCPT, R.REPUTATION_DEFERRAL, True),
    (
        "421 4.7.0 Service unavailable - try again later",
        ICLOUD,
        Stage.CONNECT,
        R.SERVER_BUSY,
        True,
    ),
    # --- Amazon SES ---------------------------------------------------------------
    (
        "454 Throttling failure: Daily message quota exceeded.",
        SES,
        Stage.MAIL,
        R.SENDING_QUOTA,
        True,
    ),
    (
        "454 Throttling failure: Maximum sending rate exceeded.",
        SES,
        Stage.MAIL,
        R.RATE_LIMITED,
        True,
    ),
    (
        "554 Message rejected: Email address is not verified. The following identities failed "
        "the check in region US-EAST-1: sender@example.com",
        SES,
        Stage.END_OF_DATA,
        R.SENDER_REJECTED,
        False,
    ),
    (
        "554 Sending paused for this account. For more information, please check the AWS "
        "Management Console.",
        SES,
        Stage.END_OF_DATA,
        R.AUTH_CREDENTIALS,
        False,
    ),
    (
        "554 Access denied: User `arn:aws:iam::123456789012:user/ses-smtp-user' is not "
        "authorized to perform `ses:SendRawEmail' on resource "
        "`arn:aws:ses:us-east-1:123456789012:identity/example.com'",
        SES,
        Stage.END_OF_DATA,
        R.AUTH_CREDENTIALS,
        False,
    ),
    (
        "552 Message length is more than 10485760 bytes long: '10485761'.",
        SES,
        Stage.END_OF_DATA,
        R.MESSAGE_TOO_LARGE,
        False,
    ),
    ("454 Temporary service failure", SES, Stage.END_OF_DATA, R.SERVER_BUSY, True),
    (
        "554 Transaction failed: Duplicate header 'DKIM-Signature'.",
        SES,
        Stage.END_OF_DATA,
        R.CONTENT_REJECTED,
        False,
    ),
    # --- SendGrid --------------------------------------------------------------------
    (
        "451 Authentication failed: Maximum credits exceeded",
        SENDGRID,
        Stage.AUTH,
        R.SENDING_QUOTA,
        True,
    ),
    (
        "550 The from address does not match a verified Sender Identity. Mail cannot be sent "
        "until this error is resolved.",
        SENDGRID,
        Stage.MAIL,
        R.SENDER_REJECTED,
        False,
    ),
    ("550 Unauthenticated senders not allowed", SENDGRID, Stage.MAIL, R.AUTH_CREDENTIALS, False),
    # --- Mailgun --------------------------------------------------------------------
    (
        "421 Domain sandbox123.mailgun.org is not allowed to send: Sandbox subdomains are for "
        "test purposes only. Please add your own domain or add the address to authorized "
        "recipients in Account Settings.",
        MAILGUN,
        Stage.RCPT,
        R.RELAY_DENIED,
        True,
    ),
    (
        "421 Domain example.com is not allowed to send: Free accounts are for test purposes "
        "only. Please upgrade or add the address to authorized recipients in Account Settings.",
        MAILGUN,
        Stage.RCPT,
        R.RELAY_DENIED,
        True,
    ),
    (
        "550 5.7.1 Please activate your Mailgun account. Check your inbox or log in to your "
        "control panel to resend the activation email.",
        MAILGUN,
        Stage.MAIL,
        R.AUTH_CREDENTIALS,
        False,
    ),
    # --- Zoho ------------------------------------------------------------------------
    (
        "550 5.4.6 Unusual sending activity detected. Please try after sometime.",
        ZOHO,
        Stage.MAIL,
        R.RATE_LIMITED,
        True,
    ),
    ("554 5.1.8 Email Outgoing Blocked.", ZOHO, Stage.MAIL, R.SENDER_REJECTED, False),
    # --- GMX / web.de ------------------------------------------------------------------
    (
        "554-Transaction failed\r\n554 Reject due to policy restrictions.",
        GMX,
        Stage.END_OF_DATA,
        R.RATE_LIMITED,
        True,
    ),
    (
        "554-Transaction failed\r\n554 Reject due to policy violations.",
        WEBDE,
        Stage.END_OF_DATA,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    ("501 Syntax error in parameters or arguments", GMX, Stage.MAIL, R.POLICY_REJECTED, False),
    (
        "554-mail.gmx.net (mxgmx014) Nemesis ESMTP Service not available\r\n"
        "554-No SMTP service\r\n554 IP address is block listed.",
        GMX,
        Stage.CONNECT,
        R.BLOCKLISTED,
        False,
    ),
    # --- Comcast / Cox ----------------------------------------------------------------
    (
        "421 resimta-h1p-028598.sys.comcast.net comcast 192.0.2.1 Too many sessions opened "
        "RL000001",
        COMCAST,
        Stage.CONNECT,
        R.RATE_LIMITED,
        True,
    ),
    (
        "554 resimta-po-39v.sys.comcast.net comcast 192.0.2.1 found on one or more DNSBLs, see "
        "http://postmaster.comcast.net/smtp-error-codes.php#BL000001",
        COMCAST,
        Stage.CONNECT,
        R.BLOCKLISTED,
        False,
    ),
    # A block in a 4xx: the server chose not to be final (DEFERRED_BY_4XX).
    ("451 4.2.0 Message blocked AUP#CDRBL", "cxr.mx.a.cox.net", Stage.RCPT, R.BLOCKLISTED, True),
    # --- QQ -----------------------------------------------------------------------------
    ("550 Ip frequency limited", QQ, Stage.MAIL, R.RATE_LIMITED, True),
    ("550 Sender frequency limited", QQ, Stage.MAIL, R.RATE_LIMITED, True),
    ("550 Domain frequency limited", QQ, Stage.MAIL, R.RATE_LIMITED, True),
    (
        "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022",
        QQ,
        Stage.END_OF_DATA,
        R.SPAM_CONTENT,
        False,
    ),
    (
        "550 Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022",
        QQ,
        Stage.RCPT,
        R.RECIPIENT_UNKNOWN,
        False,
    ),
    # --- Others (KumoMTA's shaping rules) -----------------------------------------------
    (
        "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many "
        "connections, slow down. OFR005_104 [104]",
        "smtp-in.orange.fr",
        Stage.CONNECT,
        R.TOO_MANY_CONNECTIONS,
        True,
    ),
    (
        "421 mwinf5c79 ME OFR004_105 [105]",
        "smtp-in.orange.fr",
        Stage.CONNECT,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "421 4.2.0 Service refuse. Veuillez essayer plus tard. Service refused, please try "
        "later. OFR005_505 [505]",
        "smtp-in.orange.fr",
        Stage.END_OF_DATA,
        R.REPUTATION_DEFERRAL,
        True,
    ),
    (
        "451 Internal resource temporarily unavailable - "
        "https://community.mimecast.com/docs/DOC-1369#451",
        "eu-smtp-inbound-1.mimecast.com",
        Stage.RCPT,
        R.GREYLISTED,
        True,
    ),
    ("Too many messages for this session", "mx.netvigator.com", None, R.SESSION_LIMIT, True),
    # --- Microsoft: Exchange Online NDR list (learn.microsoft.com) ----------------
    (
        "550 5.7.502 Access denied, spam abuse detected. The sending account has been banned "
        "due to detected spam activity.",
        OUTLOOK,
        Stage.END_OF_DATA,
        R.SENDER_REJECTED,
        False,
    ),
    (
        "550 5.7.134 RESOLVER.RST.SenderNotAuthenticatedForMailbox; authentication required",
        HOTMAIL,
        Stage.END_OF_DATA,
        R.POLICY_REJECTED,
        False,
    ),
    ("550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient", HOTMAIL,
     Stage.END_OF_DATA, R.MESSAGE_TOO_LARGE, False),
    ("432 4.3.2 STOREDRV.Deliver; recipient thread limit exceeded", HOTMAIL, Stage.END_OF_DATA,
     R.RATE_LIMITED, True),
    ("550 5.4.310 DNS domain nowhere.invalid does not exist", OUTLOOK, Stage.RCPT,
     R.DOMAIN_UNKNOWN, False),
    ("554 5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process "
     "message due to a permanent exception", OUTLOOK, Stage.END_OF_DATA, R.SPAM_CONTENT, False),
    # --- T-Online (postmaster.t-online.de) --------------------------------------------
    ("554 IP=198.51.100.7 - A problem occurred. (Ask your postmaster for help or to contact "
     "tosa@rx.t-online.de to clarify.) (BL)", "mx03.t-online.de", Stage.CONNECT,
     R.BLOCKLISTED, False),
    ("554 Dialup/transient IP not allowed. Use a mailgateway or contact toda@rx.t-online.de "
     "if obsolete. (DIAL)", None, Stage.CONNECT, R.BLOCKLISTED, False),
    # --- Mimecast (Mimecast SMTP Error Codes) ------------------------------------------
    ("421 Unable to process connection at this time - https://community.mimecast.com/docs/"
     "DOC-1369#421", "us-smtp-inbound-2.mimecast.com", Stage.CONNECT, R.SERVER_BUSY, True),
    ("550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550",
     "us-smtp-inbound-2.mimecast.com", Stage.RCPT, R.RECIPIENT_UNKNOWN, False),
    # --- Gateways, Mail.ru -------------------------------------------------------------
    ("554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.9",
     "mx0b-00654321.pphosted.com", Stage.RCPT, R.BLOCKLISTED, False),
    ("550 Domain of forward path is not allowed", None, Stage.RCPT, R.RELAY_DENIED, False),
    ("550 message sending for this account is disabled", "smtp.mail.ru", Stage.MAIL,
     R.AUTH_CREDENTIALS, False),
    # --- Comcast, Sophos, Trend Micro DDEI, Korean portals ---------------------------
    ("554 resimta-po-21v.sys.comcast.net comcast 198.51.100.2 blocked, see "
     "http://postmaster.comcast.net/smtp-error-codes.php#ES000001", COMCAST, Stage.CONNECT,
     R.BLOCKLISTED, False),
    ("550 5.7.1 Message didn't contain a valid DKIM signature. XGEMAIL_0001", None,
     Stage.END_OF_DATA, R.AUTH_POLICY, False),
    ("550 5.7.1 Sender domain failed a DBL test. XGEMAIL_0005", None, Stage.MAIL,
     R.BLOCKLISTED, False),
    ("550 5.7.1 Message rejected because the TLS version used doesn't match the version "
     "configured in your policy. XGEMAIL_0006", None, Stage.MAIL, R.TLS_REQUIRED, False),
    ("550 5.7.1 Message rejected because your license has expired. XGEMAIL_0007", None,
     Stage.RCPT, R.POLICY_REJECTED, False),
    ("550 5.7.1 Message rejected because the recipient's domain isn't a Sophos Email "
     "protected domain. XGEMAIL_0010", None, Stage.RCPT, R.RELAY_DENIED, False),
    ("550 5.1.1 Message rejected because the recipient's email address doesn't exist. "
     "XGEMAIL_0011", None, Stage.RCPT, R.RECIPIENT_UNKNOWN, False),
    ("552 5.3.4 Message rejected because it exceeded the allowed size. XGEMAIL_0012", None,
     Stage.END_OF_DATA, R.MESSAGE_TOO_LARGE, False),
    ("550 5.5.3 Message rejected because it exceeded the maximum number of recipients allowed "
     "for a large message. XGEMAIL_0013", None, Stage.RCPT, R.TOO_MANY_RECIPIENTS, True),
    ("550 5.7.1 Message rejected because it exceeded the recipient's total inbound rate limit "
     "from all senders. XGEMAIL_0015", None, Stage.RCPT, R.RATE_LIMITED, True),
    ("421 Block temporarily (Sender Filtering/Authentication)", None, Stage.CONNECT,
     R.POLICY_REJECTED, True),
    ("450 Temporary denial of connection (450) for Zombie matches (ERS)", None, Stage.CONNECT,
     R.REPUTATION_DEFERRAL, True),
    ("550 Permanent denial of connection (550) for RBL+ matches (ERS)", None, Stage.CONNECT,
     R.BLOCKLISTED, False),
    ("421 4.3.2 Your IP(203.0.113.4) is filtered and this connection will be closed. You must "
     "register your IP to http://realip.naver.com", "mx2.naver.com", Stage.CONNECT,
     R.BLOCKLISTED, True),
    ("421 4.3.1 You send too many messages.", "mx2.naver.com", Stage.MAIL, R.RATE_LIMITED,
     True),
    ("554 5.7.1 DAS51 203.0.113.4: Your mail is blocked automatically by anti-spam system. "
     "(E06)", "mx2.hanmail.net", Stage.RCPT, R.BLOCKLISTED, False),
    # --- Haraka (connection.js) ------------------------------------------------------
    ("550 I cannot deliver mail for <someone@elsewhere.test>", "mx.example.net", Stage.RCPT,
     R.RELAY_DENIED, False),
    ("553 sorry, your envelope recipient is in my badrcptto list (#5.7.1)", "mx.example.net",
     Stage.RCPT, R.POLICY_REJECTED, False),
    # Issue 18, second pass: each new provider rule, on a variant of its
    # documented reply (other addresses, hosts and trailers).
    ("550 5.7.0 Mail Sending denied.", RELAY, Stage.MAIL, R.SENDER_REJECTED, False),
    ("550 5.7.12 Sender was not authenticated by organization [AM4PEPF00025F97.prod.outlook.com]",
     OUTLOOK, Stage.END_OF_DATA, R.POLICY_REJECTED, False),
    ("421 RP-002 (COL0-MC2F7) Unfortunately, some messages from 198.51.100.7 weren't sent.",
     HOTMAIL, Stage.RCPT, R.RATE_LIMITED, True),
    ("550 SC-001 (BAY0-MC1-F21) Unfortunately, messages from 198.51.100.7 weren't sent.",
     HOTMAIL, Stage.MAIL, R.BLOCKLISTED, False),
    ("550 DY-002 (COL0-MC5-F28) Mail rejected by Windows Live Hotmail for policy reasons.",
     HOTMAIL, Stage.MAIL, R.BLOCKLISTED, False),
    ("553 Relaying disallowed as <news@unverified.example.org>", "smtp.zeptomail.eu",
     Stage.MAIL, R.SENDER_REJECTED, False),
    ("550 <bob@web.de>: Syntax error in parameters or arguments", WEBDE, Stage.RCPT,
     R.POLICY_REJECTED, False),
    ("550 Policy level block list in force - https://community.mimecast.com/docs/DOC-1369",
     "us-smtp-inbound-2.mimecast.com", Stage.MAIL, R.POLICY_REJECTED, False),
    ("550 5.7.1 Policy rejection on the target address", "mx.yandex.net", Stage.RCPT,
     R.MAILBOX_DISABLED, False),
    ("554 5.7.1 Client host [198.51.100.7] blocked using spam statistics; see https://ya.cc/1IrBc",
     "mx.yandex.net", Stage.CONNECT, R.BLOCKLISTED, False),
    ("550 #5.1.0 Address rejected bob@example.org", "esa1.example.iphmx.com", Stage.RCPT,
     R.RECIPIENT_UNKNOWN, False),
    ("554 5.0.0 Unexpected internal error", "in1-smtp.messagingengine.com", Stage.END_OF_DATA,
     R.RECIPIENT_UNKNOWN, False),
    ("552 5.2.2 <ann@fastmail.fm>: Recipient address rejected: Mailbox over quota",
     "in2-smtp.messagingengine.com", Stage.RCPT, R.MAILBOX_FULL, False),
    ("556 Too many invalid recipient requests. Closing connection.", "mx.example.org",
     Stage.RCPT, R.PROTOCOL_ERROR, False),
    ("554 5.7.1 : (HVU:B1) http://postmaster.info.aol.com/errors/554hvub1.html",
     "mailin-02.mx.aol.com", Stage.CONNECT, R.BLOCKLISTED, False),
    ("421 4.7.1 : (RLY:OB) http://postmaster.info.aol.com/errors/421rlyob.html",
     "mailin-02.mx.aol.com", Stage.RCPT, R.REPUTATION_DEFERRAL, True),
    ("421 fed1rmimpi blocked. Refer to Error Codes section for more information. AUP#CXCNCT",
     "mx.east.cox.net", Stage.CONNECT, R.TOO_MANY_CONNECTIONS, True),
    ("550 <a@nx.example> sender rejected. AUP#CXSNDR", "mx.east.cox.net", Stage.MAIL,
     R.SENDER_REJECTED, False),
    ("550 Email sending blocked due to suspicious account activity. AUP#CXMJ", "smtp.cox.net",
     Stage.MAIL, R.AUTH_CREDENTIALS, False),
    ("421 4.4.5 CCRT 198.51.100.7: Connection refused. Server is busy(RT)", "mx2.hanmail.net",
     Stage.CONNECT, R.BLOCKLISTED, True),
    ("550 Transaction failed. (SPAM_SUSPECT:IP_CONTROL)", "mx2.paran.com", Stage.MAIL,
     R.BLOCKLISTED, False),
    ("450 4.7.1 <a@b.example>: Recipient address rejected: SPF temperror (DNS timeout)",
     "mx.b.example", Stage.RCPT, R.SERVER_BUSY, True),
    # Exchange Online, in wordings of no corpus row: a quarantine under a 5.2.1
    # status, STOREDRV faults under x.3 statuses, journaling.
    ("554 5.2.1 Content Filter agent quarantined this message; see the quarantine",
     "example-com.mail.protection.outlook.com", Stage.END_OF_DATA, R.SPAM_CONTENT, False),
    ("554 5.3.0 STOREDRV.Deliver; unexpected store error",
     "example-com.mail.protection.outlook.com", Stage.END_OF_DATA, R.SERVER_BUSY, False),
    ("451 4.3.0 STOREDRV.Deliver.Exception: store unavailable",
     "example-com.mail.protection.outlook.com", Stage.END_OF_DATA, R.SERVER_BUSY, True),
    ("550 5.3.190 Journaling on-premises messages is not supported",
     "example-com.mail.protection.outlook.com", Stage.END_OF_DATA, R.POLICY_REJECTED, False),
    # Proofpoint's block list, in the words its customers see.
    ("554 5.7.0 Local Policy Violation - see your postmaster", "mx0b-00123401.pphosted.com",
     Stage.CONNECT, R.BLOCKLISTED, False),
    # iCloud, in wordings of no corpus row: a recipient receiving too fast, a
    # Hide My Email address switched off.
    ("421 4.7.1 Message to alice@icloud.com deferred due to excessive volume",
     "mx02.mail.icloud.com", Stage.RCPT, R.RATE_LIMITED, True),
    ("550 5.7.1 Relay not permitted for user alice@privaterelay.appleid.com",
     "mx02.mail.icloud.com", Stage.RCPT, R.MAILBOX_DISABLED, False),
    # AT&T and Barracuda, in wordings of no corpus row.
    ("421 failure in DNS look-up for 192.0.2.7", "ff-ip4-mx-vip2.prodigy.net", Stage.CONNECT,
     R.AUTH_POLICY, True),
    ("550 unauthorized interface for [192.0.2.7]", "mx2.bellsouth.net", Stage.CONNECT,
     R.BLOCKLISTED, False),
    ("554 rejecting spoofed message from a known brand", "d456.ess.barracudanetworks.com",
     Stage.END_OF_DATA, R.SPAM_CONTENT, False),
    # Mimecast documents "The incorrect hostname used for inbounds" as a 451
    # and as a 550 (the corpus holds the 451).
    ("550 The incorrect hostname used for inbounds", "eu-smtp-inbound-2.mimecast.com",
     Stage.RCPT, R.CONNECTION_ERROR, False),
    ("451 4.4.0 Incorrect hostname used for inbounds", "eu-smtp-inbound-2.mimecast.com",
     Stage.RCPT, R.CONNECTION_ERROR, True),
    # An SPF/DKIM/DMARC check that failed temporarily, in wordings of no
    # corpus row (the shape of Haraka's "450 sender <x> SPF Temporary Error").
    ("451 4.7.1 DKIM temporary failure, try again later", "mx.b.example", Stage.END_OF_DATA,
     R.SERVER_BUSY, True),
    ("450 DMARC: temp. error looking up policy", "mx.b.example", Stage.MAIL,
     R.SERVER_BUSY, True),
    ("550 5.7.1 SPF fail: temporary error is not the verdict here", "mx.b.example", Stage.MAIL,
     R.AUTH_POLICY, False),
    # An AUP# code the rules do not know: a block in a 5xx.
    ("554 cox connection refused from [198.51.100.7]. AUP#CXNEW", "mx.east.cox.net",
     Stage.CONNECT, R.BLOCKLISTED, False),
]  # fmt: skip


# The default classifier scans with ahocorasick-rs when it is installed; the
# pure one always with the pure-Python trie regex: both must agree.
PURE = Classifier(accelerator=False)


@pytest.mark.parametrize("scan", ["default", "pure"])
@pytest.mark.parametrize(("text", "host", "stage", "reason", "transient"), EXAMPLES)
def test_documented_provider_replies(
    text: str, host: str | None, stage: Stage | None, reason: Reason, transient: bool, scan: str
) -> None:
    classifier = PURE if scan == "pure" else default_classifier
    c = classifier(text, host=host, stage=stage)
    assert (c.reason, c.transient) == (reason, transient), c.explanation


def test_every_provider_rule_fires() -> None:
    fired = {classify(t, host=h, stage=s).rule for t, h, s, _, _ in EXAMPLES}
    dead = [r.name for r in PROVIDER_RULES if r.name not in fired]
    assert dead == []


def test_provider_rule_names_are_unique() -> None:
    # A name is what an explanation shows; two rules must not share one.
    names = [r.name for r in PROVIDER_RULES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("text", "stage", "provider_host", "other_host"),
    [
        ("501 Syntax error in parameters or arguments", Stage.MAIL, GMX, "mx.example.net"),
        (
            "552 1 Requested mail action aborted, mailbox not found: over limit",
            Stage.RCPT,
            YAHOO,
            "mx.example.net",
        ),
        ("454 Temporary service failure", Stage.MAIL, SES, "mx.example.net"),
        (
            "554-Transaction failed\r\n554 Reject due to policy restrictions.",
            Stage.MAIL,
            GMX,
            "mx.example.net",
        ),
    ],
)
def test_host_bound_rules_apply_to_their_provider_only(
    text: str, stage: Stage, provider_host: str, other_host: str
) -> None:
    mine = classify(text, host=provider_host, stage=stage)
    other = classify(text, host=other_host, stage=stage)
    assert mine.rule is not None
    assert mine.rule != other.rule


def test_host_names_match_case_insensitively() -> None:
    c = classify("501 Syntax error in parameters or arguments", host="MX00.EMIG.GMX.NET")
    assert c.reason is Reason.POLICY_REJECTED
