# Wakeru: the bot and its model worker in one container (the bot spawns the worker).
# The same image also runs a separate GPU worker (`python -m model_worker serve`) for
# worker.transport: redis; docker-compose.yml runs it as both the bot and the worker (README, "Scaling out").
# CUDA-capable PyTorch runtime; on a host without a GPU the worker falls back to CPU.
#   docker build -t wakeru .
#   docker run --gpus all -e DISCORD_TOKEN=... -e HF_TOKEN=... \
#     -v wakeru-data:/data -v wakeru-hf:/cache/huggingface wakeru
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    WAKERU_STORAGE__URL=sqlite:////data/wakeru.db \
    WAKERU_STORAGE__HEALTH_FILE=/data/health.json \
    WAKERU_DISCORD__SAMPLES_DIR=/app/samples

WORKDIR /app
# Dependencies first, so code edits do not reinstall them. The base image's torch
# already satisfies torch>=2.4, so pip keeps it (no second copy of CUDA wheels).
COPY pyproject.toml README.md ./
COPY wakeru ./wakeru
COPY model_worker ./model_worker
COPY bot ./bot
RUN pip install --no-compile . && python -c "import torch, transformers, discord, aiosqlite"
COPY config.yaml ./
COPY samples ./samples

RUN useradd --create-home --uid 10001 wakeru \
    && mkdir -p /data /cache/huggingface \
    && chown -R wakeru:wakeru /data /cache
USER wakeru

# /data: the label database and the heartbeat file; /cache/huggingface: downloaded models
VOLUME ["/data", "/cache/huggingface"]

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
