# kube-prewarm: one image for every subcommand of the `kube-prewarm` command
# (`operator`, `agent`, `serve`, `warm`, ...). The Helm chart runs it twice:
#   operator Deployment: args [operator], as UID 65532 (this image's default user);
#   agent DaemonSet:     args [agent], as root (runAsUser: 0) because it writes the
#     root-owned hostPath store and containerd's certs.d, and talks to containerd's
#     root-only socket. It needs no Linux capabilities (the chart drops ALL).
#
# No shell and no npm in the image: Debian bookworm's glibc, libstdc++ and libgcc_s (what
# node links), the CA bundle, /etc/passwd with root and nonroot (65532), /tmp, `env` (for
# bin/kube-prewarm.js's `#!/usr/bin/env node`), Node, production node_modules and /app.
# scripts/build-image.sh builds the same image without Docker (multi-arch OCI layout,
# reproducible digests); both stage every layer with scripts/image/stage.sh, so they have
# the same layout (test/helm/dockerfile.test.ts, test/image/image.test.ts).
#
#   docker build -t kube-prewarm .
#   docker run --rm kube-prewarm warm docker.io/library/busybox:1.37 --store /tmp/store
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/kube-prewarm:<tag> --push .

# The same Node as scripts/build-image.sh's NODE_VERSION.
ARG NODE_IMAGE=node:24.22.3-bookworm-slim

# ---- build: compile TypeScript; stage the app and node layers ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
ENV NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false
COPY package.json package-lock.json ./
# --ignore-scripts: package.json's `prepare` would compile before the sources are here;
# no dependency needs an install script (bullmq and @grpc/grpc-js run without them).
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY oci/src oci/src
COPY agent/src agent/src
COPY operator/src operator/src
COPY bin bin
COPY scripts/image/stage.sh scripts/image/stage.sh
# app: /app/{package.json,bin,dist} and the runtime files next to the sources that tsc does
# not copy (agent/src/runtime/cri.proto, loaded from the source tree by dist/). node:
# /usr/local/bin/node and /usr/local/bin/kube-prewarm -> /app/bin/kube-prewarm.js.
RUN npm run build \
 && bash scripts/image/stage.sh app /layers/app /src /src/dist \
 && bash scripts/image/stage.sh node /layers/node /usr/local/bin/node

# ---- deps: production node_modules from package.json and the lockfile alone ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /layers/deps/app
COPY package.json package-lock.json ./
RUN NPM_CONFIG_UPDATE_NOTIFIER=false npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm package.json package-lock.json

# ---- base: the Debian packages' files, users, CA bundle, nsswitch.conf, /tmp ----
FROM ${NODE_IMAGE} AS base
COPY scripts/image/stage.sh /stage.sh
WORKDIR /debs
RUN apt-get update \
 && apt-get download $(bash /stage.sh packages kube-prewarm | cut -d'|' -f1) \
 && bash /stage.sh rootfs kube-prewarm /layers/base /debs

# ---- runtime: four layers, as scripts/build-image.sh writes them ----
FROM scratch
COPY --from=base /layers/base/ /
COPY --from=build /layers/node/ /
COPY --from=deps /layers/deps/ /
COPY --from=build /layers/app/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODE_ENV=production \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/kube-prewarm/kube-prewarm" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.title="kube-prewarm" \
      org.opencontainers.image.licenses="Apache-2.0"
# Non-root by default (the operator, `serve` and `warm` need nothing more); the agent
# DaemonSet overrides this with runAsUser: 0, see above.
USER 65532:65532
# Node handles SIGTERM itself (both binaries shut down gracefully on it); no init needed.
ENTRYPOINT ["kube-prewarm"]
CMD ["--help"]
