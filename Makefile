.PHONY: test chaos bench

test:
	.venv/bin/python -m pytest

# Randomised fault run (not part of CI): thousands of subscribers, random worker
# kills and SMTP faults, ending with the oracle. SECONDS bounds it.
chaos:
	.venv/bin/python bench/chaos.py --subscribers $${SUBSCRIBERS:-3000} --seconds $${SECONDS_LIMIT:-300}
