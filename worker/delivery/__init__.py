"""Plan, ledger, senders (smtp, file, console, memory), retry policy."""
