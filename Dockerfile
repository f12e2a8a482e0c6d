# syntax=docker/dockerfile:1
# Multi-stage build of agentry-server. Dependencies are built in their own
# layer from the manifests alone, so source edits do not rebuild them.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependency layer: manifests plus stub sources.
COPY Cargo.toml Cargo.lock build.rs ./
COPY client/Cargo.toml client/Cargo.toml
COPY proto proto
RUN mkdir -p server client/src migrations \
 && echo 'fn main() {}' > server/main.rs && touch server/lib.rs client/src/lib.rs \
 && cargo build --release --locked --bin agentry-server \
 && rm -rf server client/src
# The real sources.
COPY server server
COPY client client
COPY migrations migrations
RUN touch server/lib.rs server/main.rs build.rs \
 && cargo build --release --locked --bin agentry-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home agentry
COPY --from=build /src/target/release/agentry-server /usr/local/bin/agentry-server
USER agentry
ENV AGENTRY_LISTEN_ADDR=0.0.0.0:50051 AGENTRY_LOG_FORMAT=json
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/agentry-server"]
