"""Is this configuration ready for real mail? What `newsletter check` reports as errors
and what the worker and `send` refuse to start with over the SMTP backend.

Only settings are read here, never the network: the gate runs at every worker start
and every `send`. `newsletter check` adds the live SMTP probe and the warnings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.settings import Settings

# The sample values shipped in Settings, config/newsletter.toml and config/example.env:
# mail that carries them carries someone else's name and a made-up postal address.
SAMPLE_NAMES = frozenset({"Melange News Weekly"})
SAMPLE_POSTAL_ADDRESSES = frozenset({"Melange News, 1 Example Street, 10115 Berlin, Germany"})
# Keys shorter than this can be guessed; links signed with a guessed key can be forged
# for every reader (unsubscribe, manage, leave).
MIN_SECRET_BYTES = 32
# Values that docs, compose files and examples ever suggested, and the usual ones.
PLACEHOLDER_KEYS = frozenset({
    "change-me", "changeme", "change_me", "change-me-to-a-long-random-string", "secret", "secret-key",
    "secret_key", "x", "pick-one", "demo-only-not-secret", "your-secret-key", "replace-me", "password",
})
GENERATE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class Finding:
    setting: str  # the environment variable to change
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


def secret_key_problem(settings: Settings) -> str | None:
    """Why NEWSLETTER_SECRET_KEY cannot sign links that reach people, or None."""
    key = settings.optional_secret_key()
    if not key:
        return f"not set: generate one with {GENERATE_KEY}"
    folded = key.strip().casefold()
    if folded in PLACEHOLDER_KEYS or folded.startswith(("change-me", "changeme", "change_me")):
        return f"is a placeholder anyone can read in the docs: generate one with {GENERATE_KEY}"
    if len(key.encode()) < MIN_SECRET_BYTES or len(set(key)) < 8:
        return (f"is too weak (at least {MIN_SECRET_BYTES} random bytes): "
                f"generate one with {GENERATE_KEY}")
    return None


def configuration_findings(settings: Settings) -> list[Finding]:
    """The errors that keep this configuration from real mail, read from settings alone."""
    found = []
    if settings.smtp_sink:
        found.append(Finding("NEWSLETTER_SMTP_SINK", "is true: the relay keeps the mail and delivers none"))
    name, postal = settings.newsletter_name.strip(), settings.postal_address.strip()
    if not name or name in SAMPLE_NAMES:
        found.append(Finding("NEWSLETTER_NEWSLETTER_NAME",
                             f"{'is the sample ' + repr(name) if name else 'is empty'}: set your newsletter's name"))
    if not postal or postal in SAMPLE_POSTAL_ADDRESSES:
        found.append(Finding("NEWSLETTER_POSTAL_ADDRESS",
                             f"{'is the sample address' if postal else 'is empty'}: every newsletter must carry "
                             "your real postal address (CAN-SPAM and similar laws)"))
    if _is_local_domain(settings.sender.domain):
        found.append(Finding("NEWSLETTER_FROM", f"{settings.sender.addr_spec} is at {settings.sender.domain}: "
                                                "receivers refuse it, and replies cannot reach you"))
    public = urlsplit(settings.public_url)
    if public.scheme != "https":
        found.append(Finding("NEWSLETTER_PUBLIC_URL", f"{settings.public_url} is not https://: readers' "
                                                      "unsubscribe and manage links would travel in clear text"))
    elif _is_local_domain(public.hostname or ""):
        found.append(Finding("NEWSLETTER_PUBLIC_URL", f"{settings.public_url} points at this machine: "
                                                      "readers' links would not open"))
    key_problem = secret_key_problem(settings)
    if key_problem is not None:
        found.append(Finding("NEWSLETTER_SECRET_KEY", key_problem))
    return found


def require_ready(settings: Settings) -> None:
    """ConfigError listing what keeps real mail from going out; nothing for the file and
    console backends, whose mail reaches nobody, and only a weak key for a sink relay."""
    if settings.email_backend != "smtp":
        return
    if settings.smtp_sink:
        # Nothing reaches a reader, but links signed with a guessable key would still be
        # forgeable wherever this key is used again.
        errors = [f for f in configuration_findings(settings) if f.setting == "NEWSLETTER_SECRET_KEY"]
    else:
        errors = [f for f in configuration_findings(settings) if f.error]
    if errors:
        raise ConfigError("not ready for real mail (NEWSLETTER_EMAIL_BACKEND=smtp): "
                          + "; ".join(map(str, errors)) + " (`newsletter check` explains each)")


def _is_local_domain(host: str) -> bool:
    host = host.strip("[]").rstrip(".").casefold()
    if host == "localhost" or host.endswith(".localhost") or not host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified
