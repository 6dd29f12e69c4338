# syntax=docker/dockerfile:1
# Build: the same cargo command as .ci/run's release build.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ringlb

# Runtime: slim, non-root, the binary as entrypoint.
FROM debian:bookworm-slim
# nftables: node mode (`run --kubernetes --nftables`) programs its table through `nft`;
# conntrack: it deletes stale UDP conntrack entries through `conntrack -D`;
# iproute2: `--preserve-client-ip` adds its policy rule and route through `ip`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables conntrack iproute2 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ringlb
COPY --from=build /src/target/release/ringlb /usr/local/bin/ringlb
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ringlb"]
CMD ["demo", "--listen", "0.0.0.0:7700"]
