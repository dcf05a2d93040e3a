# syntax=docker/dockerfile:1
FROM python:3.11-slim

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
RUN pip install --no-cache-dir -e . \
 && mkdir -p /app/var \
 && chown -R app:app /app/var

USER app

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
