"""Why a delivery failed (a *reason*, in the vocabulary bounce libraries such as Sisimai
converge on), read from the status code, the server's words and the report's format;
then what the reason does to the reader (its *kind*, `KINDS`; docs/bounces.md has the table).

The words decide before the code: servers put generic codes (5.0.0, 5.7.1, 5.1.0) on
refusals whose text says what happened ("5.7.1 No such user", "550 5.0.0 blocked using
zen.spamhaus.org"). The code decides where the words say nothing we know. Only reasons
about the reader's mailbox or domain are permanent; a refusal about us (our address,
content, reputation, authentication, sending rate) never counts against the reader.
"""

from __future__ import annotations

import re
from enum import StrEnum

from worker.bounces.phrases import PHRASES
from worker.store.models import BounceKind


class Reason(StrEnum):
    # the reader's mailbox or domain, for good
    USER_UNKNOWN = "userunknown"
    HOST_UNKNOWN = "hostunknown"
    SUSPEND = "suspend"                  # mailbox disabled
    HAS_MOVED = "hasmoved"
    NOT_ACCEPT = "notaccept"             # the domain takes no mail (null MX)
    # temporary, or the receiving side's trouble: counted toward the transient limit
    MAILBOX_FULL = "mailboxfull"
    EXCEED_LIMIT = "exceedlimit"
    MESG_TOO_BIG = "mesgtoobig"
    EXPIRED = "expired"                  # given up after retries
    SYSTEM_FULL = "systemfull"
    SYSTEM_ERROR = "systemerror"
    NETWORK_ERROR = "networkerror"
    MAILER_ERROR = "mailererror"
    # the reader's own filter or rules refused it, or an unknown user only after DATA
    # (the server accepted the address first): maybe the mailbox, maybe a rule about us
    FILTERED = "filtered"
    # about us: our address, content, reputation, authentication or sending rate
    TOO_MANY_CONN = "toomanyconn"
    SPEEDING = "speeding"                # rate limited
    BLOCKED = "blocked"
    REJECTED = "rejected"                # our sender address refused
    BAD_REPUTATION = "badreputation"
    REQUIRE_PTR = "requireptr"
    SPAM_DETECTED = "spamdetected"
    VIRUS_DETECTED = "virusdetected"
    CONTENT_ERROR = "contenterror"
    POLICY_VIOLATION = "policyviolation"
    SECURITY_ERROR = "securityerror"
    AUTH_FAILURE = "authfailure"         # SPF, DKIM, DMARC
    NOT_COMPLIANT_RFC = "notcompliantrfc"
    NO_RELAYING = "norelaying"
    SYNTAX_ERROR = "syntaxerror"
    # not a failure
    VACATION = "vacation"
    DELIVERED = "delivered"
    DELAYED = "delayed"
    FEEDBACK = "feedback"                # a complaint (abuse, fraud)
    # a failure whose reason we cannot read: kept for review when it is about ours
    UNDEFINED = "undefined"


_PERMANENT = {Reason.USER_UNKNOWN, Reason.HOST_UNKNOWN, Reason.SUSPEND, Reason.HAS_MOVED, Reason.NOT_ACCEPT}
_TRANSIENT = {Reason.FILTERED, Reason.MAILBOX_FULL, Reason.EXCEED_LIMIT, Reason.MESG_TOO_BIG, Reason.EXPIRED,
              Reason.SYSTEM_FULL,
              Reason.SYSTEM_ERROR, Reason.NETWORK_ERROR, Reason.MAILER_ERROR}
_NOT_A_FAILURE = {Reason.VACATION, Reason.DELIVERED, Reason.DELAYED}

# What each reason does; None: not acted on (ignored).
KINDS: dict[Reason, BounceKind | None] = {
    **{r: BounceKind.PERMANENT for r in _PERMANENT},
    **{r: BounceKind.TRANSIENT for r in _TRANSIENT},
    **{r: None for r in _NOT_A_FAILURE},
    Reason.FEEDBACK: BounceKind.COMPLAINT,
    Reason.UNDEFINED: BounceKind.REVIEW,
}
for _reason in Reason:
    KINDS.setdefault(_reason, BounceKind.SENDER)

# The order phrases are tried in: the narrow ones first (a full mailbox is often said with
# "rejected", a blocklist with "user"), the catch-alls ("rejected", "filtered") last.
ORDER = (
    Reason.MAILER_ERROR,  # a local delivery program's own output ("procmail: ... No such user")
    Reason.MAILBOX_FULL, Reason.MESG_TOO_BIG, Reason.EXCEED_LIMIT, Reason.SUSPEND, Reason.HAS_MOVED,
    Reason.NO_RELAYING, Reason.AUTH_FAILURE, Reason.REQUIRE_PTR, Reason.NOT_COMPLIANT_RFC, Reason.BAD_REPUTATION,
    Reason.SPAM_DETECTED, Reason.VIRUS_DETECTED, Reason.SPEEDING, Reason.TOO_MANY_CONN, Reason.BLOCKED,
    Reason.POLICY_VIOLATION, Reason.USER_UNKNOWN, Reason.HOST_UNKNOWN, Reason.NOT_ACCEPT, Reason.REJECTED,
    Reason.FILTERED, Reason.SECURITY_ERROR, Reason.CONTENT_ERROR, Reason.EXPIRED, Reason.SYSTEM_FULL,
    Reason.NETWORK_ERROR, Reason.SYSTEM_ERROR,
)

# Ours, beside Sisimai's: wordings met in real bounces that its lists lack.
EXTRA_PHRASES: dict[Reason, tuple[str | tuple[str, ...], ...]] = {
    Reason.USER_UNKNOWN: ("not a valid user", "user unknown", "unknown user", "no such user", "unknown recipient",
                          "user doesn't have a", "account does not exist", "recipient not found",
                          "addressee unknown", "unrouteable address", "mailbox unavailable",
                          "not listed in domino directory", "no valid recipients", "recipient address rejected.",
                          "no mailbox here by that name", "ディレクトリのリストにありません",
                          "invalid final delivery userid", "not listed in public name & address book"),
    Reason.SUSPEND: ("account is disabled", "the recipient account is blocked"),
    Reason.NOT_ACCEPT: ("indicated no smtp service", "null mx"),
    Reason.HOST_UNKNOWN: ("host or domain name not found", "domain not found", "unrouteable mail domain",
                          "no mx record", "dns lookup failure"),
    Reason.MAILBOX_FULL: ("over quota", "quota exceeded", "mailbox full", "mailbox is full", "insufficient storage",
                          "too many messages", "mailbox exceeds allowed size"),
    Reason.EXPIRED: ("retry timeout exceeded", "could not be delivered for", "delivery time expired",
                     "has been delayed for too long", "message expired", "envelope expired",
                     "could not deliver for the last", "did not accept our requests to connect",
                     "host not reachable", ("delivery failed ", " attempts")),
    Reason.SYSTEM_ERROR: ("does not support tls", "internal system error"),
    # Google Groups refusing a post from a non-member (its bounce, in the sender's language).
    Reason.REJECTED: ("groups.google.com/support", "are not member"),
    Reason.BLOCKED: ("please use the smtp server of your isp", "my name was rejected", "blocklist", "spamhaus"),
    Reason.SPEEDING: ("receiving mail at a rate that", "frequency limited"),
    Reason.POLICY_VIOLATION: ("policy violation",),
    Reason.SPAM_DETECTED: ("scored as spam",),
    Reason.AUTH_FAILURE: ("dmarc", "spf check", "dkim", "authentication checks failed"),
}
# x.y.z (and the enhanced codes Sisimai uses for its own reasons): what the code alone says.
CODES: dict[str, Reason] = {
    "2.1.5": Reason.DELIVERED, "4.1.6": Reason.HAS_MOVED, "4.1.7": Reason.REJECTED, "4.1.8": Reason.REJECTED,
    "4.2.1": Reason.SUSPEND, "4.2.2": Reason.MAILBOX_FULL, "4.2.3": Reason.EXCEED_LIMIT, "4.3.1": Reason.SYSTEM_FULL,
    "4.3.2": Reason.NOT_ACCEPT, "4.4.1": Reason.EXPIRED, "4.4.2": Reason.NETWORK_ERROR, "4.4.4": Reason.NETWORK_ERROR,
    "4.4.5": Reason.SYSTEM_FULL, "4.4.6": Reason.NETWORK_ERROR, "4.4.7": Reason.EXPIRED, "4.7.1": Reason.BLOCKED,
    "4.7.25": Reason.REQUIRE_PTR, "5.1.0": Reason.USER_UNKNOWN, "5.1.1": Reason.USER_UNKNOWN,
    "5.1.2": Reason.HOST_UNKNOWN, "5.1.3": Reason.USER_UNKNOWN, "5.1.6": Reason.HAS_MOVED, "5.1.7": Reason.REJECTED,
    "5.1.8": Reason.REJECTED, "5.1.10": Reason.NOT_ACCEPT, "5.2.1": Reason.SUSPEND, "5.2.2": Reason.MAILBOX_FULL,
    "5.2.3": Reason.EXCEED_LIMIT, "5.3.1": Reason.SYSTEM_FULL, "5.3.2": Reason.NOT_ACCEPT,
    "5.3.4": Reason.MESG_TOO_BIG, "5.4.4": Reason.HOST_UNKNOWN, "5.5.3": Reason.TOO_MANY_CONN,
    "5.6.0": Reason.CONTENT_ERROR, "5.7.1": Reason.SECURITY_ERROR, "5.7.13": Reason.SUSPEND,
    "5.7.17": Reason.HAS_MOVED, "5.7.18": Reason.HAS_MOVED, "5.7.23": Reason.AUTH_FAILURE,
    "5.7.25": Reason.REQUIRE_PTR, "5.7.26": Reason.AUTH_FAILURE, "5.7.27": Reason.NOT_ACCEPT,
    "5.7.28": Reason.SPAM_DETECTED,
}
# By class and subject where the detail is not listed above: x.1.x addresses, x.2.x the
# mailbox, x.3.x the receiving system, x.4.x network and routing, x.5.x protocol, x.6.x
# content, x.7.x security and policy.
SUBJECTS = {"1": Reason.USER_UNKNOWN, "2": Reason.MAILBOX_FULL, "3": Reason.SYSTEM_ERROR, "4": Reason.NETWORK_ERROR,
            "5": Reason.SYNTAX_ERROR, "6": Reason.CONTENT_ERROR, "7": Reason.SECURITY_ERROR}

# An enhanced status code, never the tail of an IP address ("[192.0.2.5]" is not 2.0.2.5).
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
MAX_TEXT = 8000


def _phrases(reason: Reason) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    index, pairs = PHRASES.get(reason.value, ((), ()))
    extra = EXTRA_PHRASES.get(reason, ())
    return (index + tuple(p for p in extra if isinstance(p, str)),
            pairs + tuple(p for p in extra if isinstance(p, tuple)))


_TABLE = tuple((reason, *_phrases(reason)) for reason in ORDER)


def _in_order(text: str, words: tuple[str, ...]) -> bool:
    at = -1
    for word in words:
        at = text.find(word, at + 1)
        if at < 0:
            return False
        at += len(word) - 1
    return True


def _matches(reason: Reason, text: str | None) -> bool:
    text = " ".join((text or "")[:MAX_TEXT].lower().split())
    index, pairs = _phrases(reason)
    return any(p in text for p in index) or any(_in_order(text, p) for p in pairs)


def by_text(text: str | None) -> Reason | None:
    """The reason the server's words name, if any we know."""
    if not text:
        return None
    text = " ".join(text[:MAX_TEXT].lower().split())
    for reason, index, pairs in _TABLE:
        # "Recipient address rejected: <why>" (Postfix) is no refusal of our sender address.
        words = text.replace("recipient address rejected", "") if reason is Reason.REJECTED else text
        if any(p in words for p in index) or any(_in_order(words, p) for p in pairs):
            return reason
    return None


def by_code(code: str | None) -> Reason | None:
    """The reason a status code names on its own; None for a code that names none (x.y.0,
    other than 5.1.0, which servers use for an unknown address), or for what is no code."""
    if not code or not ENHANCED.fullmatch(code):
        return None
    if code in CODES:
        return CODES[code]
    klass, subject, detail = code.split(".")
    if detail == "0" and subject != "7":  # x.7.0 is still security or policy: never the mailbox
        return None
    if subject == "1" and klass == "4":
        return Reason.USER_UNKNOWN
    return SUBJECTS.get(subject)


def is_generic(code: str | None) -> bool:
    """A code servers put on refusals of every kind: its words say more."""
    return code is None or code.endswith(".0") or code in ("5.7.1", "4.7.1", "5.1.0")


def find_code(text: str | None) -> str | None:
    found = ENHANCED.search(text or "")
    return ".".join(found.groups()) if found else None


# Words that say "refused" or "unknown" without saying why: a specific code says more.
_WEAK_WORDS = frozenset({Reason.REJECTED, Reason.SECURITY_ERROR, Reason.SYNTAX_ERROR})


def reason_of(code: str | None, *texts: str | None) -> Reason:
    """The diagnostic's words, unless a specific code says more than vague words (or names
    our sender address: 5.1.7, 5.1.8); then a specific code; then the rest of the report's
    words; then a generic code."""
    first, *rest = texts or (None,)
    words = by_text(first)
    coded = by_code(code)
    specific = coded if not is_generic(code) else None
    # "User unknown" yields only to a code whose meaning is listed (5.7.26 is DMARC whatever the words).
    listed = specific if code in CODES else None
    if specific is Reason.REJECTED or words in _WEAK_WORDS and specific is not None \
            or words is Reason.USER_UNKNOWN and listed is not None:
        return specific
    # A generic code whose words name nothing we know says no more than "refused": never the mailbox.
    fallback = coded if not (is_generic(code) and coded is not None and KINDS[coded] is BounceKind.PERMANENT) \
        else None
    found = words or specific or next(filter(None, map(by_text, rest)), None) or fallback or Reason.UNDEFINED
    if found is Reason.HOST_UNKNOWN and any(_matches(Reason.NETWORK_ERROR, t) for t in texts):
        return Reason.NETWORK_ERROR  # the name servers failed to answer: no proof the domain is gone
    return found


def kind_of_reason(reason: Reason, code: str | None) -> BounceKind | None:
    """A mailbox reason under a temporary (4.x.x) status is the server saying it may pass:
    transient, never permanent on a 4xx."""
    kind = KINDS[reason]
    if kind is BounceKind.PERMANENT and code is not None and code.startswith("4."):
        return BounceKind.TRANSIENT
    return kind
