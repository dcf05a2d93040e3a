"""Errors the command line turns into one clear line (exit status 2 unless said)."""


class NewsletterError(Exception):
    """A failure the user can act on; its message is shown as is."""

    exit_code = 2


class ConfigError(NewsletterError):
    """A setting is missing or has a bad value."""


class UsageError(NewsletterError):
    """Bad arguments or input that cannot be used at all."""


class HeaderInjectionError(NewsletterError):
    """A value meant for a mail header carries CR, LF, NUL or another control character."""


class NothingToSend(NewsletterError):
    """The command ran but there is nothing for it to show or send."""

    exit_code = 1
