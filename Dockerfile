# syntax=docker/dockerfile:1
# rollq worker image.
#
# Stages: `chef` (toolchain + cargo-chef) → `planner` (dependency recipe) → `builder` (dependencies
# cooked in their own layer, so a source-only change rebuilds only the crate) → a distroless `cc`
# runtime: glibc, libgcc and CA roots (rustls reads the system trust store), no shell, non-root.
#
#   docker build -t rollq:dev .
#   docker run --rm rollq:dev worker --help

# The toolchain the project is built and tested with (Cargo.toml's rust-version is the MSRV).
# bookworm, to match the glibc of the distroless debian12 runtime.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
# cargo-chef pinned so the dependency layer is reproducible.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin rollq
COPY . .
RUN cargo build --release --locked --bin rollq \
    && install -D -m 0555 target/release/rollq /out/rollq

# nonroot tag: UID/GID 65532, matching runAsUser/runAsGroup in deploy/base/deployment.yaml.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/rollq /usr/local/bin/rollq
USER 65532:65532
# Admin HTTP port: /healthz, /readyz, /metrics.
EXPOSE 8080
# Exec form: rollq is PID 1 and receives SIGTERM itself, which starts its drain.
# Nothing is written to the filesystem, so the root filesystem can be mounted read-only.
ENTRYPOINT ["/usr/local/bin/rollq"]
CMD ["worker"]
