# One image for the API, the worker, migrations and the CLI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POISONSCAN_DATA_DIR=/var/lib/poisonscan

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 poisonscan \
    && mkdir -p /var/lib/poisonscan \
    && chown poisonscan /var/lib/poisonscan

WORKDIR /app
COPY pyproject.toml README.md ./
COPY detection ./detection
COPY service ./service
COPY worker ./worker
COPY poisonscan ./poisonscan
# The migrations ship inside the package (service/migrations): `poisonscan migrate`.
RUN pip install ".[service,worker,cli]"

USER poisonscan
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
