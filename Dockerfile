# syntax=docker/dockerfile:1

# herald's container image: build the release binary in a Rust image, then
# copy it alone into a distroless runtime that has glibc and CA certificates
# but no shell and no package manager.
#
#   make image                        # docker build -t herald:<crate version> .
#
# The binary needs no writable paths, so the image runs with a read-only root
# filesystem as the distroless "nonroot" user (uid/gid 65532).

ARG RUST_VERSION=1.95

# Build on bookworm because the runtime is Debian 12: a binary linked against
# a newer glibc would not start there.
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binary is
# copied out of target/ because a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
USER 65532:65532
# http (WebSocket), grpc (Publisher API), peer (pod mesh), and admin
# (/metrics, /healthz, /readyz) when started with --admin-addr=0.0.0.0:9100,
# as the chart does; without it they are served on the http port.
EXPOSE 8080 9090 7070 9100
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
