# syntax=docker/dockerfile:1
#
# Keyway container image: a release build on Debian bookworm (glibc 2.36), run on distroless
# (glibc, libgcc, CA certificates, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t keyway:0.1.0 .
#
# The image ships the binary only. Mount a config directory at /etc/keyway (the Helm chart
# mounts its ConfigMap there; see docs/deploy.md): Keyway watches that directory and reloads.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest out of the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# Build-time settings (the allocator's configuration).
COPY .cargo ./.cargo
# Cache mounts keep the crate registry and target/ between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin keyway \
 && install -D -m 0755 target/release/keyway /out/keyway

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="keyway" \
      org.opencontainers.image.description="Stateless sharding proxy for Redis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/keyway /usr/local/bin/keyway
# nonroot (65532:65532) already; numeric so that runAsNonRoot can verify it.
USER 65532:65532
# 6380: Redis clients (config `listen`); 9380: admin HTTP, /metrics /healthz /readyz (`admin`).
EXPOSE 6380 9380
# SIGTERM (the default stop signal) makes Keyway drain: see drain_timeout.
ENTRYPOINT ["/usr/local/bin/keyway", "serve", "--config", "/etc/keyway/keyway.toml"]
