# syntax=docker/dockerfile:1

# ---- build -------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# sqlx query macros must not try to reach a database during `docker build`
# (they use the prepared .sqlx/ data when the crate uses query! macros).
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# 1. Dependencies only: this layer is rebuilt only when the manifests or the
#    lock file change. The workspace member manifests must all be present.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --bin boxoffice --locked \
 && rm -rf src loadtest/src \
           target/release/.fingerprint/boxoffice-* \
           target/release/deps/boxoffice-* target/release/deps/libboxoffice-* \
           target/release/boxoffice target/release/boxoffice.d

# 2. The real sources (src/, lua/, migrations/, .sqlx/ ...; see .dockerignore).
COPY . .
RUN cargo build --release --bin boxoffice --locked \
 && install -m 0755 target/release/boxoffice /usr/local/bin/boxoffice

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 boxoffice \
 && useradd --system --uid 10001 --gid boxoffice --no-create-home --shell /usr/sbin/nologin boxoffice
COPY --from=builder /usr/local/bin/boxoffice /usr/local/bin/boxoffice
USER 10001:10001
ENV BOXOFFICE_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=15s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/boxoffice"]
CMD ["serve"]
