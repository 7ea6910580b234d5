# syntax=docker/dockerfile:1
#
# Both images from one build (the two binaries share most dependencies):
#
#   docker build --target webhook -t ghcr.io/holysheep/holysheep-webhook:0.1.0 .
#   docker build --target sidecar -t ghcr.io/holysheep/holysheep-sidecar:0.1.0 .
#
# Final images: distroless cc-debian12 (glibc + libgcc, which the Rust binaries link;
# no shell, no package manager), user 65532 (distroless "nonroot"), read-only root
# filesystem friendly (nothing is written outside mounted volumes).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
# 1: the sidecar is built profile-guided (scripts/pgo-build.sh: an instrumented build
# serves a training load on loopback, then the optimised build: two sidecar builds
# instead of one, for 22 % less CPU per request, see BENCHMARKS.md). 0: a plain release
# build.
ARG PGO=1
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit); the binaries
# are copied out of the cached target dir because it is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin holysheep-webhook \
    && mkdir -p /out \
    && cp target/release/holysheep-webhook /out/ \
    && if [ "$PGO" = 1 ]; then \
         bash scripts/pgo-build.sh && cp target/pgo/release/holysheep-sidecar /out/; \
       else \
         cargo build --release --locked --bin holysheep-sidecar \
         && cp target/release/holysheep-sidecar /out/; \
       fi

FROM ${RUNTIME_IMAGE} AS webhook
LABEL org.opencontainers.image.title="holysheep-webhook" \
      org.opencontainers.image.description="Mutating admission webhook that injects the holysheep LLM-forwarding sidecar" \
      org.opencontainers.image.source="https://github.com/holysheep/holysheep-injector" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/holysheep-webhook /usr/local/bin/holysheep-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/holysheep-webhook"]
CMD ["serve", "--self-signed"]

FROM ${RUNTIME_IMAGE} AS sidecar
LABEL org.opencontainers.image.title="holysheep-sidecar" \
      org.opencontainers.image.description="Loopback OpenAI-compatible proxy to HolySheep: key, aliases, retries, fallbacks, cost metrics" \
      org.opencontainers.image.source="https://github.com/holysheep/holysheep-injector" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/holysheep-sidecar /usr/local/bin/holysheep-sidecar
# glibc keeps 7 freed blocks per size class in a per-thread cache; with more requests in
# flight than that, freed per-request blocks spill to the shared bins and every later
# malloc pays for sorting and coalescing them: instructions per request grew with
# concurrency.
# 128 covers some 64 short requests in flight (the runtime is one thread). The cache
# keeps freed blocks, so its size is memory held after load: 128 held under 1 MiB more
# than glibc's defaults under sustained load, 1024 about 3 MiB more for the same CPU (see
# BENCHMARKS.md, "glibc's thread cache"). The benchmark runs the sidecar with this line's
# value, and a test checks that glibc accepts it.
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=128
USER 65532:65532
# 8080: the loopback proxy (127.0.0.1 only by default); 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/holysheep-sidecar"]
