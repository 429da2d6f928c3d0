# PLR inference server, CPU. Build: docker build -t plr-server .
# Run:   docker run -p 8000:8000 -v "$PWD/artifacts/models:/app/artifacts/models:ro" plr-server
# (no REDIS_URL: the server starts its embedded redis-server; docker-compose.yml wires a real one)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The CPU wheel of torch first (same pin as the Makefile), so the project's `torch>=2.3` is already
# satisfied and pip never pulls a multi-GB CUDA build. Its own layer: cached across code changes.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md* ./
COPY model ./model
COPY server ./server
COPY loadtest ./loadtest
RUN pip install .

# Non-root; models are mounted read-only at /app/artifacts/models; /data holds an embedded
# Redis's files when PLR_EMBEDDED_REDIS_DIR points there.
RUN useradd --create-home --uid 10001 plr \
    && mkdir -p /app/artifacts/models /data \
    && chown -R plr:plr /app/artifacts /data
USER plr

ENV PLR_HOST=0.0.0.0 \
    PLR_PORT=8000 \
    PLR_MODELS_DIR=/app/artifacts/models \
    PLR_DEVICE=cpu
EXPOSE 8000

# /healthz = process up (liveness). Readiness (models warm + store reachable) is /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1

CMD ["python", "-m", "server"]
