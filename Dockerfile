# One image for every Tutorflow process (API, workers, beat, Flower, migrations).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    LOG_JSON=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
RUN pip install -r /tmp/requirements.txt

COPY . .

RUN useradd --create-home --uid 10001 tutorflow \
    && mkdir -p /data/flower /tmp/tutorflow-prometheus \
    && chown -R tutorflow /data /tmp/tutorflow-prometheus
USER tutorflow

EXPOSE 8000 5555
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
