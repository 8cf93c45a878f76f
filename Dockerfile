# syntax=docker/dockerfile:1
# flowmeter's image: `flowmeter` at /usr/local/bin with the dashboard
# embedded, and the declarative files it reads at run time (schemas/,
# processors/, migrations/) in its working directory /app, as
# k8s/base/flowmeter.toml's [paths] expect. Runs as the numeric user 10001.
#   docker build -t flowmeter:0.1.0 .      (or podman/buildah, same file)
#   docker run -e FLOWMETER__SERVER__LISTEN=0.0.0.0:8080 ... flowmeter:0.1.0 serve
# Base images are pinned by tag; pin their digests too (FROM image@sha256:…)
# where your registry policy asks for it. What was built and tried here:
# docs/deploy.md#the-container-image.

# --- build: a release binary; build.rs embeds the dashboard's charting
# library with `npm ci` (web/package-lock.json), so Node.js is needed here.
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches survive between builds of BuildKit, podman and buildah; the
# binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flowmeter --bin flowmeter \
 && install -m 0755 target/release/flowmeter /flowmeter

# --- runtime: Debian slim (glibc, zlib and bash are in it; the binary links
# nothing else), CA certificates for TLS to Redis, MySQL and ClickHouse.
FROM docker.io/library/debian:12.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 flowmeter \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin flowmeter
COPY --from=build /flowmeter /usr/local/bin/flowmeter
WORKDIR /app
COPY schemas/ schemas/
COPY processors/ processors/
COPY migrations/ migrations/
# Nothing is written at run time (read-only root filesystems work).
USER 10001:10001
EXPOSE 8080
# The port the health check asks (server.listen, or server.worker_listen for
# `serve --roles rollup`, which must then be fixed, not port 0). Not a
# FLOWMETER__ variable: the config never reads it.
ENV FLOWMETER_HEALTH_PORT=8080
# /health/live: the process answers. Bash's /dev/tcp, so the image needs no
# HTTP client. (Kubernetes ignores HEALTHCHECK and uses the probes of
# k8s/base.) With [server.tls] the port speaks only TLS: use the probes then.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FLOWMETER_HEALTH_PORT} && printf 'GET /health/live HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/flowmeter"]
CMD ["serve"]
