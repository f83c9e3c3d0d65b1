# aitools-memory-exporter in a container, for Linux hosts (compose.monitoring.yml,
# profile "linux"). On macOS run the exporter natively: Docker Desktop's VM cannot see
# the Mac's processes, memory pages or Ollama.
# Pure Python: no compiler, one stage.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY exporter /src/exporter
RUN pip install /src && rm -rf /src

# Inside the container the exporter listens on all of the container's interfaces; the
# compose file publishes no port for it (Prometheus scrapes it on the compose network).
ENV AITOOLS_WEB_LISTEN_ADDRESS=0.0.0.0:8730
# glibc's malloc for a process that runs for months (exporter/service.py MALLOC_TUNABLES):
# two arenas, no per-thread caches; 1.4 MiB less resident memory and flatter over time.
ENV GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0
EXPOSE 8730

# /proc/<pid>/statm, stat and cmdline and /proc/meminfo are world-readable: no root needed.
USER 65534:65534
WORKDIR /

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8730/healthz', timeout=4)"]

ENTRYPOINT ["aitools-exporter"]
CMD ["serve"]
