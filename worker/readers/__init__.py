"""Readers: who they are (subscribers.py), how they join (signup.py) and change or leave
(manage.py), what happened to them (history.py: the one door for a status change), and
which zone their mail is timed by (zones.py)."""
