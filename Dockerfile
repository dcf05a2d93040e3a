# syntax=docker/dockerfile:1
# Python 3.11 on Debian 12; patch releases come with a rebuild (`docker compose build --pull`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app

COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY templates/ templates/
COPY config/ config/
COPY examples/ examples/

# Editable install: templates/ and examples/ next to the package stay discoverable.
# /app stays root's: the app user writes only /app/var (compose mounts a named volume
# there, which takes this ownership when first created).
RUN pip install --no-cache-dir -e . \
 && mkdir -p /app/var \
 && chown -R app:app /app/var

USER app

# The app declares both queues (celery, send): a plain worker consumes both.
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
