# PLR inference server, CPU, self-contained: the committed models are inside the image.
# Build: docker build -t plr-server .
# Run:   docker run -p 8000:8000 plr-server
#        (other models: add -v "$PWD/my-models:/app/artifacts/models:ro"; another port: -e PLR_PORT)
# (no REDIS_URL: the server starts its embedded redis-server; docker-compose.yml wires a real one)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# jemalloc: `python -m server` restarts itself on it when present (model/allocator.py; the
# engine's work per event costs ~0.8-0.9x on it, docs/serving-malloc.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

# Every version comes from requirements.lock (`make lock`), used as pip constraints, so a rebuild
# installs what was tested. It pins the CPU wheel of torch (torch==2.13.0+cpu), found only on the
# CPU index: pip never pulls a multi-GB CUDA build. Torch gets its own layer, cached across code
# changes.
COPY requirements.lock ./
RUN pip install -c requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu torch

COPY pyproject.toml README.md ./
COPY model ./model
COPY server ./server
COPY loadtest ./loadtest
RUN pip install -c requirements.lock .

# The committed serving checkpoints, owned by root: the server reads them and cannot change them.
# A volume mounted at PLR_MODELS_DIR replaces them without a rebuild.
COPY artifacts/models ./artifacts/models

# Non-root; /data holds an embedded Redis's files when PLR_EMBEDDED_REDIS_DIR points there.
RUN useradd --create-home --uid 10001 plr \
    && mkdir -p /data \
    && chown -R plr:plr /data
USER plr

# PLR_TORCH_THREADS=1: torch would otherwise start one thread per core of the *host* (it does not
# see a container's CPU limit), and those threads fight over the few cores the container gets.
# docs/latency.md measured one torch thread per server process (docs/inference.md: "one torch
# thread per process, one process per core"); scale with PLR_WORKERS or more containers, or raise
# it for one worker on a dedicated multi-core host.
# Compiled engine graphs are machine-specific (CPU ISA) and need a C++ compiler to build, which
# this slim image leaves out: the server loads them from /data/compiled when they are there
# (build them once on the serving host: `python -m model.inference.compiled --out
# /data/compiled`, in an image with g++), and serves with the eager engine otherwise (GET /models
# says which).
ENV PLR_HOST=0.0.0.0 \
    PLR_PORT=8000 \
    PLR_MODELS_DIR=/app/artifacts/models \
    PLR_DEVICE=cpu \
    PLR_TORCH_THREADS=1 \
    PLR_COMPILE=load \
    PLR_COMPILED_DIR=/data/compiled
EXPOSE ${PLR_PORT}

# /healthz = process up (liveness). Readiness (models warm + store reachable) is /readyz.
# Shell form: ${PLR_PORT} is read when the check runs, so `-e PLR_PORT=9000` moves it too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${PLR_PORT:-8000}/healthz', timeout=2)" || exit 1

CMD ["python", "-m", "server"]
