# The OTLP resilience sidecar.
#   docker build -t otlp-sidecar .
#   docker run -p 4317:4317 -p 4318:4318 -e SIDECAR_UPSTREAM=collector:4317 otlp-sidecar
# The default configuration is collector-config/sidecar-minimal.yaml; mount your own at
# /etc/otlp-sidecar/config.yaml (docker-compose.yml mounts sidecar-compose.yaml there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root user; it owns the queue directory (a named volume mounted there is created with
# this ownership on first use).
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --no-create-home --home-dir /var/lib/otlp-sidecar \
            --shell /usr/sbin/nologin sidecar \
 && mkdir -p /var/lib/otlp-sidecar /etc/otlp-sidecar \
 && chown sidecar:sidecar /var/lib/otlp-sidecar

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install . && rm -rf /src/build /src/*.egg-info

COPY collector-config/sidecar-minimal.yaml /etc/otlp-sidecar/config.yaml

WORKDIR /var/lib/otlp-sidecar
USER sidecar:sidecar
VOLUME ["/var/lib/otlp-sidecar"]

# OTLP gRPC, OTLP HTTP, health (/health, /ready, /ready/upstream), Prometheus /metrics. The admin API stays on
# loopback (127.0.0.1:4320) inside the container.
EXPOSE 4317 4318 13134 8889

# Liveness: /health (the process serves). Not /ready: an orchestrator that restarts unhealthy
# containers must not restart one that is replaying its disk queue. No curl in the slim image: the
# interpreter does the probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:13134/health', timeout=2).status == 200 else 1)"]

# SIGTERM (docker stop): stop accepting, drain for service.shutdown_timeout, exit 0. Give the
# container a longer stop timeout than that (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["otlp-sidecar"]
CMD ["--config", "/etc/otlp-sidecar/config.yaml"]
