# syntax=docker/dockerfile:1
# Multi-stage build of agentry-server. Dependencies are built in their own
# layer from the manifests alone, so source edits do not rebuild them.
#
# Base images are pinned by exact version tags; pin their digests too
# (`docker buildx imagetools inspect <image>`) where your registry policy
# asks for it: they could not be looked up where this file was written.
# The runtime's Debian release is the build image's (bookworm), so the
# binary finds the glibc it was linked against.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependency layer: every workspace member's manifest (cargo loads them all,
# even to build one package), the protos build.rs compiles, stub sources.
COPY Cargo.toml Cargo.lock build.rs ./
COPY client/Cargo.toml client/Cargo.toml
COPY tools/bench/Cargo.toml tools/bench/Cargo.toml
COPY proto proto
RUN mkdir -p server client/src tools/bench/src \
 && echo 'fn main() {}' > server/main.rs \
 && touch server/lib.rs client/src/lib.rs \
 && echo 'fn main() {}' > tools/bench/src/main.rs \
 && cargo build --release --locked -p agentry-server --bin agentry-server \
 && rm -rf server
# The real sources. The client and the bench tool are not part of the
# server binary: their stubs stay. COPY keeps the files' old times, so touch
# them, or cargo would keep the stub build.
COPY server server
COPY migrations migrations
RUN touch server/lib.rs server/main.rs build.rs \
 && cargo build --release --locked -p agentry-server --bin agentry-server

FROM debian:bookworm-20260421-slim
RUN groupadd --system --gid 10001 agentry \
 && useradd --system --uid 10001 --gid agentry --no-create-home --shell /usr/sbin/nologin agentry
COPY --from=build /src/target/release/agentry-server /usr/local/bin/agentry-server
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENV AGENTRY_LISTEN_ADDR=0.0.0.0:50051 AGENTRY_LOG_FORMAT=json AGENTRY_METRICS_ADDR=0.0.0.0:9090
# gRPC; Prometheus metrics (compose and Kubernetes keep the image's address).
EXPOSE 50051 9090
# `health` asks the listen address's port on loopback (AGENTRY_LISTEN_ADDR).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/agentry-server", "health"]
ENTRYPOINT ["/usr/local/bin/agentry-server"]
