# Wakeru images, three targets of one Dockerfile:
#   all (the default, last stage): the bot and its model worker in one container (the bot
#       spawns the worker). CUDA-capable PyTorch runtime; without a GPU the worker uses the CPU.
#         docker build -t wakeru .
#         docker run --gpus all -e DISCORD_TOKEN=... -e HF_TOKEN=... \
#           -v wakeru-data:/data -v wakeru-hf:/cache/huggingface wakeru
#   bot: the bot alone, for worker.transport: redis (`pip install .[bot]` on python:3.11-slim:
#       no torch, no model, no GPU).       docker build --target bot -t wakeru-bot .
#   worker: the GPU model worker alone, `python -m model_worker serve` on the Redis stream.
#                                          docker build --target worker -t wakeru-worker .
# docker-compose.yml runs `bot` and `worker` as separate containers (docs/operations.md, "Scaling out").

# ---- bot: the Discord side only ------------------------------------------------------------
FROM python:3.11-slim AS bot

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WAKERU_STORAGE__URL=sqlite:////data/wakeru.db \
    WAKERU_STORAGE__HEALTH_FILE=/data/health.json \
    WAKERU_DISCORD__SAMPLES_DIR=/app/samples \
    WAKERU_WORKER__TRANSPORT=redis

WORKDIR /app
# No model_worker/ here: this image never runs a model (worker.transport: redis, set above; point
# WAKERU_WORKER__REDIS_URL at the Redis the workers read). The check fails the build if torch or
# transformers ever come in with the bot's dependencies.
COPY pyproject.toml README.md ./
COPY wakeru ./wakeru
COPY bot ./bot
RUN pip install --no-compile ".[bot]" \
    && python -c "import importlib.util as u, discord, aiosqlite, asyncpg, redis, bot.cli; \
assert u.find_spec('torch') is None and u.find_spec('transformers') is None, 'torch in the bot image'"
COPY config.yaml ./
COPY samples ./samples

RUN useradd --create-home --uid 10001 wakeru \
    && mkdir -p /data \
    && chown -R wakeru:wakeru /data
USER wakeru

# /data: the heartbeat file (and the label database while storage.url stays SQLite)
VOLUME ["/data"]

# /metrics (Prometheus) and /healthz on port 9464. Inside the container only by default;
# set WAKERU_SERVICE__METRICS_HOST=0.0.0.0 and publish the port to scrape it from outside.
ENV WAKERU_SERVICE__METRICS_PORT=9464
EXPOSE 9464

# `bot health` asks /healthz: no answer if the event loop hangs, 503 while stopping; no worker on
# the stream or Redis out of reach counts as degraded, not down (it recovers by itself). No model
# to download here, hence the short start period. SIGTERM (docker stop) lets in-flight images
# finish for service.shutdown_grace_s (20 s), so give docker stop a longer timeout.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "bot", "health"]
STOPSIGNAL SIGTERM

CMD ["python", "-m", "bot"]

# ---- worker: the model side (and the bot's code, for the `all` image below) ----------------
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime AS worker

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    WAKERU_STORAGE__URL=sqlite:////data/wakeru.db \
    WAKERU_STORAGE__HEALTH_FILE=/data/health.json \
    WAKERU_DISCORD__SAMPLES_DIR=/app/samples

WORKDIR /app
# The packages before config.yaml and samples/, so editing those does not reinstall them. The
# base image's torch already satisfies torch>=2.4, so pip keeps it (no second copy of CUDA wheels).
# [bot] as well: the `all` image below runs the bot with this worker in one container.
COPY pyproject.toml README.md ./
COPY wakeru ./wakeru
COPY model_worker ./model_worker
COPY bot ./bot
RUN pip install --no-compile ".[bot,worker]" && python -c "import torch, transformers, discord, aiosqlite, redis"
COPY config.yaml ./
COPY samples ./samples

RUN useradd --create-home --uid 10001 wakeru \
    && mkdir -p /data /cache/huggingface \
    && chown -R wakeru:wakeru /data /cache
USER wakeru

# /data: the label database and the heartbeat file (`all`); /cache/huggingface: downloaded models
VOLUME ["/data", "/cache/huggingface"]

# The worker has no port. Healthy while its own heartbeat key (prefix:worker:<hostname>-…, written
# every worker.heartbeat_s and expiring after three missed beats) is in Redis: it appears once the
# model is loaded, hence the long start period (first download). docker-compose.yml gives the same.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import socket, sys, redis; \
        from wakeru.config import load_config; \
        w = load_config().worker; \
        r = redis.Redis.from_url(w.redis_url, socket_connect_timeout=5, socket_timeout=5); \
        pattern = w.redis_prefix + ':worker:' + socket.gethostname() + '-*'; \
        sys.exit(0 if next(r.scan_iter(match=pattern, count=1000), None) else 1)"]
# SIGTERM: the worker stops reading, answers what it holds for up to service.shutdown_grace_s
# (20 s) and flushes its results; anything left is taken over by another worker.
STOPSIGNAL SIGTERM

# Serves worker.redis_url (WAKERU_WORKER__REDIS_URL, or --redis-url) under worker.redis_prefix,
# the Redis and prefix of bots running worker.transport: redis.
CMD ["python", "-m", "model_worker", "serve"]

# ---- all (default): the bot with its local model worker, one container ---------------------
FROM worker AS all

# /metrics (Prometheus) and /healthz on port 9464. Inside the container only by default;
# set WAKERU_SERVICE__METRICS_HOST=0.0.0.0 and publish the port to scrape it from outside.
ENV WAKERU_SERVICE__METRICS_PORT=9464
EXPOSE 9464

# `bot health` asks /healthz: 503 once the model failed for good, no answer if the event loop
# hangs; a worker that is loading or restarting after a crash still counts as healthy.
# The start period covers the first model download. SIGTERM (docker stop) lets in-flight
# images finish for service.shutdown_grace_s (20 s), so give docker stop a longer timeout.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 CMD ["python", "-m", "bot", "health"]
STOPSIGNAL SIGTERM

CMD ["python", "-m", "bot"]
