"""What the operator console shows, as plain data: the dashboard's numbers (dashboard.py),
the reader list and a reader's page (readers.py), an edition's report (editions.py). The
web app renders them; nothing here knows about HTTP."""
