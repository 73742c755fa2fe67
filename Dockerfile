# syntax=docker/dockerfile:1
# rollq worker image.
#
# Stages: `chef` (toolchain + cargo-chef) → `planner` (dependency recipe) → `builder` (dependencies
# cooked in their own layer, so a source-only change rebuilds only the crate) → a distroless `cc`
# runtime: glibc, libgcc and CA roots (rustls reads the system trust store), no shell, non-root.
#
#   docker build -t rollq:dev .
#   docker run --rm rollq:dev worker --help
#
# Multi-arch (linux/amd64 and linux/arm64, for mixed AKS node pools): every base image here is
# published for both, so one buildx build makes a manifest list. The non-native platform is
# compiled under QEMU emulation (several times slower) unless the builder has a native node
# for it (`docker buildx create --append` an arm64 machine):
#
#   docker buildx create --use --name rollq-multi
#   docker buildx build --platform linux/amd64,linux/arm64 \
#       --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#       -t <acr>.azurecr.io/rollq:0.1.0 --push .
#
# or in ACR, one platform per task: `az acr build -r <acr> --platform linux/arm64 -t rollq:0.1.0-arm64 .`

# The toolchain the project is built and tested with (Cargo.toml's rust-version is the MSRV).
# bookworm, to match the glibc of the distroless debian12 runtime.
ARG RUST_VERSION=1.95

# cargo-chef is compiled here (pinned, --locked) rather than taken from the public
# lukemathwalker/cargo-chef image: that image's tags pair a cargo-chef version with a Rust
# version and a Debian release, and pinning one we have not pulled would trade a known cost
# (about a minute, once per cold builder; the layer is cached afterwards) for a tag that may not
# exist. To use it, replace the two lines below with
#   FROM lukemathwalker/cargo-chef:<cargo-chef version>-rust-${RUST_VERSION}-bookworm AS chef
FROM rust:${RUST_VERSION}-bookworm AS chef
# cargo-auditable embeds the dependency list (crate names and versions) in the binary, so image
# scanners (Trivy, Grype, Syft, `cargo audit bin`) see the crates inside the distroless image.
RUN cargo install cargo-chef --locked --version 0.1.78 \
    && cargo install cargo-auditable --locked --version 0.7.7
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin rollq
COPY . .
RUN cargo auditable build --release --locked --bin rollq \
    && install -D -m 0555 target/release/rollq /out/rollq

# nonroot tag: UID/GID 65532, matching runAsUser/runAsGroup in deploy/base/deployment.yaml.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
# OCI image annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
LABEL org.opencontainers.image.title="rollq" \
      org.opencontainers.image.description="Queue-driven CSV time-series roll-ups on Azure Storage: a leased queue worker scaled by KEDA" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/rollq /usr/local/bin/rollq
USER 65532:65532
# Admin HTTP port: /healthz, /readyz, /metrics.
EXPOSE 8080
# Exec form: rollq is PID 1 and receives SIGTERM itself, which starts its drain.
# Nothing is written to the filesystem, so the root filesystem can be mounted read-only.
ENTRYPOINT ["/usr/local/bin/rollq"]
CMD ["worker"]
