# One image for the data plane: switchboard (CLI + all-in-one dev server),
# switchboard-gateway and switchboard-worker. The operator's image is built
# from the same file with --target operator.
#
#   docker build -t ghcr.io/switchboard-dev/switchboard:0.1.0 .
#   docker build --target operator -t ghcr.io/switchboard-dev/switchboard-operator:0.1.0 .
#
# --build-arg SWITCHBOARD_GIT_SHA=$(git rev-parse --short=12 HEAD) puts the
# commit into every binary's switchboard_build_info metric (else "unknown").

FROM rust:1.95-bookworm AS build
ARG SWITCHBOARD_GIT_SHA=""
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin switchboard --bin switchboard-gateway --bin switchboard-worker \
      --bin switchboard-operator \
 && mkdir -p /out \
 && cp target/release/switchboard target/release/switchboard-gateway \
       target/release/switchboard-worker target/release/switchboard-operator /out/

# Non-root (uid 65532, numeric so `runAsNonRoot` can check it without a
# `runAsUser`; the gateway and worker pods the operator builds set it, the
# chart's operator pod runs as it by default),
# read-only root filesystem friendly: nothing is
# written outside mounted volumes.
FROM debian:bookworm-slim AS runtime-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home switchboard
USER 65532:65532

FROM runtime-base AS operator
COPY --from=build /out/switchboard-operator /usr/local/bin/
ENTRYPOINT ["switchboard-operator"]
CMD ["run"]

FROM runtime-base AS switchboard
COPY --from=build /out/switchboard /out/switchboard-gateway /out/switchboard-worker /usr/local/bin/
EXPOSE 8080 9091
ENTRYPOINT ["switchboard-gateway"]
