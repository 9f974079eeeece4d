# quotaplane server image. Build: docker build -t quotaplane .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip install . && useradd --system --uid 10001 quotaplane
# The sample OpenClaw upstream (stdlib only): docker-compose.yml's openclaw service runs
# python envoy/openclaw.py from this image. After the install, so editing it rebuilds one layer.
COPY envoy ./envoy
USER quotaplane
EXPOSE 50051
# Production settings come from the environment (see README: Settings).
ENV QUOTAPLANE_GRPC_ADDR=0.0.0.0:50051 QUOTAPLANE_LOG_FORMAT=json
# grpc.health.v1 on the port QUOTAPLANE_GRPC_ADDR names (dialled on loopback), so changing the
# setting moves the probe with it. docker-compose.yml turns it off for the one-shot migrate
# container and replaces it for openclaw.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["quotaplane", "health"]
ENTRYPOINT ["quotaplane"]
CMD ["serve"]
