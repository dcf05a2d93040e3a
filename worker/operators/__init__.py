"""The operators: who they are (accounts.py), who is acting now (actor.py), and what they
changed (audit.py). Nothing is imported here: the command line reads actor.py at every
start and must not load SQLAlchemy for it."""
