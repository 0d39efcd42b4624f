#!/usr/bin/env bash
# Stages the file trees of the kube-prewarm image (and of the Redis image the tests run in
# a cluster), one tree per image layer. The one place that says what goes into the images:
# scripts/build-image.sh (no Docker) and the Dockerfile (its build stages RUN this file)
# both call it, so the two produce the same layout.
#
#   stage.sh packages <image>             the Debian packages of <image>'s base layer, one a
#                                         line: `name` (whole package, docs pruned) or
#                                         `name|path,path` (only these paths, + copyright)
#   stage.sh rootfs <image> <out> <debdir> the base layer: the packages' .debs from <debdir>
#                                         extracted (`dpkg-deb -x`), the CA bundle, passwd,
#                                         group, nsswitch.conf, /tmp (1777)
#   stage.sh users <image>                the users of <image> (`name:uid:home`), whose home
#                                         directories are owned by them
#   stage.sh node <out> <node-binary> [<licence>]
#                                         the Node layer: /usr/local/bin/node and the
#                                         `kube-prewarm` command (-> /app/bin/kube-prewarm.js)
#   stage.sh app <out> <repo> <dist>      the app layer: /app without node_modules
#                                         (package.json, bin/, dist/, non-TypeScript files
#                                         of the compiled source trees such as cri.proto)
#
# Production node_modules are the fourth layer: `npm ci --omit=dev --ignore-scripts`
# (NPM_CI_FLAGS below) in a directory holding only package.json and package-lock.json.
# Needs bash, coreutils, find, dpkg-deb; `app` also node (to read tsconfig.build.json).
set -euo pipefail
umask 022
export LC_ALL=C

NPM_CI_FLAGS='--omit=dev --ignore-scripts --no-audit --no-fund'

die() {
  echo "stage.sh: $*" >&2
  exit 1
}

packages() {
  case $1 in
    kube-prewarm)
      # What `node` needs (readelf -d: libc, libm, libdl, libpthread, ld.so, libstdc++,
      # libgcc_s), gcc-12-base for the copyright those two libraries' doc links point at,
      # the CA bundle, os-release (scanners), and `env` for the entrypoint's
      # `#!/usr/bin/env node` line: no shell.
      printf '%s\n' libc6 libgcc-s1 libstdc++6 gcc-12-base \
        'ca-certificates|usr/share/ca-certificates' \
        'base-files|etc/os-release,usr/lib/os-release' \
        'coreutils|usr/bin/env'
      ;;
    redis)
      # redis-server (a link to redis-check-rdb in redis-tools) and redis-cli (the chart's
      # exec probes), with the libraries they load (readelf -d, checked by build-image.sh).
      printf '%s\n' libc6 libgcc-s1 libstdc++6 gcc-12-base \
        'ca-certificates|usr/share/ca-certificates' \
        'base-files|etc/os-release,usr/lib/os-release' \
        libatomic1 liblzf1 libjemalloc2 libssl3 libsystemd0 libcap2 libgcrypt20 \
        libgpg-error0 liblzma5 libzstd1 liblz4-1 \
        'redis-tools|usr/bin/redis-check-rdb,usr/bin/redis-check-aof,usr/bin/redis-cli' \
        'redis-server|usr/bin/redis-server'
      ;;
    *) die "unknown image '$1' (kube-prewarm, redis)" ;;
  esac
}

users() {
  case $1 in
    kube-prewarm) echo 'nonroot:65532:/home/nonroot' ;;
    redis) echo 'redis:999:/data' ;;
    *) die "unknown image '$1'" ;;
  esac
}

# Paths dropped from whole packages: documentation (copyright files stay), init systems,
# debugger helpers. Nothing here is loaded at run time.
PRUNE=(usr/share/man usr/share/info usr/share/lintian usr/share/locale usr/share/bug
  usr/share/doc-base usr/share/gcc usr/share/gdb usr/share/bash-completion usr/share/zsh
  etc/init.d etc/logrotate.d etc/default lib/systemd usr/lib/systemd etc/systemd)

rootfs() {
  local image=$1 out=$2 debdir=$3
  [ -d "$debdir" ] || die "no directory $debdir"
  mkdir -p "$out"
  local work
  work=$(mktemp -d)
  local spec name paths deb p
  while IFS= read -r spec; do
    name=${spec%%|*}
    paths=
    [ "$name" = "$spec" ] || paths=${spec#*|}
    shopt -s nullglob
    local found=("$debdir/${name}_"*.deb)
    shopt -u nullglob
    [ ${#found[@]} -eq 1 ] || die "want exactly one ${name}_*.deb in $debdir, found ${#found[@]}"
    deb=${found[0]}
    rm -rf "$work/x" && mkdir "$work/x"
    dpkg-deb -x "$deb" "$work/x"
    if [ -z "$paths" ]; then
      cp -a "$work/x/." "$out/"
    else
      for p in ${paths//,/ }; do
        [ -e "$work/x/$p" ] || [ -L "$work/x/$p" ] || die "$name: no $p in $(basename "$deb")"
        (cd "$work/x" && cp -a --parents "$p" "$out/")
      done
      p=usr/share/doc/$name/copyright
      [ ! -e "$work/x/$p" ] || (cd "$work/x" && cp -a --parents "$p" "$out/")
    fi
    # Package records as distroless writes them, so image scanners know the versions.
    mkdir -p "$out/var/lib/dpkg/status.d"
    dpkg-deb -f "$deb" >"$out/var/lib/dpkg/status.d/$name"
  done < <(packages "$image")
  rm -rf "$work"

  for p in "${PRUNE[@]}"; do rm -rf "${out:?}/$p"; done
  if [ -d "$out/usr/share/doc" ]; then
    find "$out/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
    find "$out/usr/share/doc" -mindepth 1 -type d -empty -delete
  fi

  # The CA bundle, as update-ca-certificates would write it (every Mozilla certificate,
  # sorted by name), at the path OpenSSL, Go and NODE_EXTRA_CA_CERTS users expect.
  if [ -d "$out/usr/share/ca-certificates" ]; then
    mkdir -p "$out/etc/ssl/certs"
    local crt
    find "$out/usr/share/ca-certificates" -name '*.crt' -type f | sort | while IFS= read -r crt; do
      sed -e '$a\' "$crt"
    done >"$out/etc/ssl/certs/ca-certificates.crt"
    [ -s "$out/etc/ssl/certs/ca-certificates.crt" ] || die "empty CA bundle"
    rm -rf "$out/usr/share/ca-certificates"
  fi

  local user uid home
  {
    echo 'root:x:0:0:root:/root:/sbin/nologin'
    for user in $(users "$image"); do
      IFS=: read -r name uid home <<<"$user"
      echo "$name:x:$uid:$uid:$name:$home:/sbin/nologin"
    done
  } >"$out/etc/passwd"
  {
    echo 'root:x:0:'
    for user in $(users "$image"); do
      IFS=: read -r name uid home <<<"$user"
      echo "$name:x:$uid:"
    done
  } >"$out/etc/group"
  # Without this file glibc asks DNS before /etc/hosts.
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
    >"$out/etc/nsswitch.conf"
  chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"
  mkdir -p "$out/root" "$out/tmp"
  chmod 0700 "$out/root"
  chmod 1777 "$out/tmp"
  for user in $(users "$image"); do
    IFS=: read -r name uid home <<<"$user"
    mkdir -p "$out$home"
    chmod 0750 "$out$home"
    # The Dockerfile's stage runs as root and COPY keeps owners; build-image.sh sets the
    # owner in the layer tar instead (`users`), whoever runs it.
    [ "$(id -u)" -ne 0 ] || chown "$uid:$uid" "$out$home"
  done
}

node_layer() {
  local out=$1 bin=$2 licence=${3:-}
  [ -x "$bin" ] || die "no executable $bin"
  mkdir -p "$out/usr/local/bin"
  cp "$bin" "$out/usr/local/bin/node"
  chmod 0755 "$out/usr/local/bin/node"
  ln -sfn /app/bin/kube-prewarm.js "$out/usr/local/bin/kube-prewarm"
  if [ -n "$licence" ] && [ -f "$licence" ]; then
    mkdir -p "$out/usr/local/share/doc/node"
    cp "$licence" "$out/usr/local/share/doc/node/LICENSE"
    chmod 0644 "$out/usr/local/share/doc/node/LICENSE"
  fi
}

app() {
  local out=$1 repo=$2 dist=$3
  [ -f "$dist/agent/src/cli/main.js" ] || die "$dist holds no compiled agent/src/cli/main.js"
  mkdir -p "$out/app"
  cp "$repo/package.json" "$out/app/package.json"
  cp -r "$repo/bin" "$out/app/bin"
  cp -r "$dist" "$out/app/dist"
  # The trees tsc compiles; files in them that are not TypeScript are loaded at run time
  # from next to the sources (dist/agent/src/runtime/*.js read ../../../agent/src/**.proto).
  local trees
  trees=$(cd "$repo" && node -p "require('./tsconfig.build.json').include.join(' ')")
  # shellcheck disable=SC2086
  (cd "$repo" && find $trees -type f ! -name '*.ts' -print0 | sort -z |
    xargs -0 -r cp --parents -t "$out/app")
  chmod 0755 "$out/app/bin/kube-prewarm.js"
  # Checkouts made under another umask: owner rw, everybody else read (and x where set).
  chmod -R u=rwX,go=rX "$out/app"
}

cmd=${1:-}
shift || true
case $cmd in
  packages) [ $# -eq 1 ] || die "usage: stage.sh packages <image>"; packages "$1" ;;
  users) [ $# -eq 1 ] || die "usage: stage.sh users <image>"; users "$1" ;;
  rootfs) [ $# -eq 3 ] || die "usage: stage.sh rootfs <image> <out> <debdir>"; rootfs "$@" ;;
  node) [ $# -ge 2 ] || die "usage: stage.sh node <out> <node-binary> [<licence>]"; node_layer "$@" ;;
  app) [ $# -eq 3 ] || die "usage: stage.sh app <out> <repo> <dist>"; app "$@" ;;
  npm-ci-flags) echo "$NPM_CI_FLAGS" ;;
  *) die "usage: stage.sh packages|users|rootfs|node|app|npm-ci-flags ... (see the head of this file)" ;;
esac
