"""What comes back after the relay accepted a message: bounces (DSNs, RFC 3464, and the
non-standard ones), complaints (ARF, RFC 5965) and providers' events, matched to the
delivery they are about and applied to the ledger and the subscriber (docs/bounces.md).

- verp.py: the envelope sender that names the delivery (on the send path: kept cheap);
- reports.py: a mail in, `Report`s out (flufl.bounce and the standard library's parser);
- providers.py: the same from a JSON event (ours, or Amazon SES through SNS);
- apply.py: the one function every input ends in;
- mailboxes.py: Maildir, mbox and IMAP, each message once, bounded.
"""
