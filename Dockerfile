# kube-prewarm: one image for every subcommand of the `kube-prewarm` command
# (`operator`, `agent`, `serve`, `warm`). The Helm chart runs it twice:
#   operator Deployment: args [operator], as UID 65532 (this image's default user);
#   agent DaemonSet:     args [agent], as root (runAsUser: 0) because it writes the
#     root-owned hostPath store and containerd's certs.d, and talks to containerd's
#     root-only socket. It needs no Linux capabilities (the chart drops ALL).
#
#   docker build -t kube-prewarm .
#   docker run --rm kube-prewarm warm docker.io/library/busybox:1.37 --store /tmp/store

ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: install every dependency, compile TypeScript, drop dev dependencies ----
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
# /out gets the compiled package plus the runtime files next to the sources that tsc
# does not copy (agent/src/runtime/cri.proto is loaded from the source tree by
# dist/agent/src/runtime/cri-image-service.js).
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts \
 && mkdir -p /out \
 && cp -r package.json package-lock.json bin dist node_modules /out/ \
 && find oci/src agent/src operator/src -type f ! -name '*.ts' -exec cp --parents {} /out/ \;

# ---- runtime: Node and the compiled package only ----
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /out/ /app/
RUN ln -s /app/bin/kube-prewarm.js /usr/local/bin/kube-prewarm \
 && chmod 0755 /app/bin/kube-prewarm.js
# Non-root by default (the operator, `serve` and `warm` need nothing more); the agent
# DaemonSet overrides this with runAsUser: 0, see above.
USER 65532:65532
# Node handles SIGTERM itself (both binaries shut down gracefully on it); no init needed.
ENTRYPOINT ["kube-prewarm"]
CMD ["--help"]
