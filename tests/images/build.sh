#!/usr/bin/env bash
# The image tier's images: a Python base built from Debian's packages (no registry can be
# reached here, so the Dockerfiles' python:3.11-slim FROM line cannot be pulled), then the
# runner and operator images from the repository's own Dockerfiles on top of it.
#
# Each image is labelled with a digest of its inputs and rebuilt only when they change. Prints
# each image's size and build time. Installs podman, buildah, runc and mmdebstrap with apt when
# they are missing; anything that stops the tier is said in one line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CONTAINERS_CONF="$here/containers.conf"
BASE=localhost/dioptra-test-base:bookworm-py311
VERSION=${VERSION:-0.1.0}
fail() { echo "image tier: $*" >&2; exit 1; }

need=()
for tool in podman buildah runc mmdebstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || fail "${need[*]} not installed and not running as root to install them; run: sudo apt-get install -y podman buildah runc mmdebstrap"
  echo "installing ${need[*]} with apt-get"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc mmdebstrap; } \
    >/tmp/dioptra-image-tier-apt.log 2>&1 || fail "apt-get install podman buildah runc mmdebstrap failed (log: /tmp/dioptra-image-tier-apt.log)"
fi

# pip inside the builds needs the CA bundle the host's pip trusts (TLS may be re-signed by a proxy).
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[[ -r $ca_bundle ]] || fail "no CA bundle at $ca_bundle for pip in the builds; set PIP_CERT"

inputs_digest() { (cd "$repo" && cat "$@" | sha256sum | cut -c1-16); }
current_label() { podman image inspect --format '{{index .Labels "dev.dioptra.inputs"}}' "$1" 2>/dev/null || true; }
report() {  # name, seconds, how
  local size; size=$(podman image inspect --format '{{.Size}}' "$1")
  printf 'image %-44s %6d MB  %s\n' "$1" $((size / 1000000)) "$2"
}

base_digest=$( { cat "$here/build.sh" "$ca_bundle"; echo "$BASE"; } | sha256sum | cut -c1-16)
if [[ $(current_label "$BASE") == "$base_digest" ]]; then
  report "$BASE" "cached"
else
  start=$(date +%s)
  rootfs=$(mktemp -d /tmp/dioptra-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=python3.11,python3.11-venv,python3-pip,python-is-python3,ca-certificates \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    bookworm "$rootfs/rootfs.tar" >/dev/null 2>"$rootfs/mmdebstrap.log" \
    || fail "mmdebstrap of a bookworm root filesystem failed: $(tail -1 "$rootfs/mmdebstrap.log")"
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$rootfs/rootfs.tar" / >/dev/null
  buildah copy --quiet "$container" "$ca_bundle" /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --env LANG=C.UTF-8 \
    --cmd /bin/bash --label "dev.dioptra.inputs=$base_digest" "$container"
  buildah commit --quiet --rm "$container" "$BASE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
  report "$BASE" "built in $(( $(date +%s) - start )) s"
fi

build() {  # image, Dockerfile
  local image=$1 dockerfile=$2 digest files
  files=$(cd "$repo" && git ls-files --cached --others --exclude-standard pyproject.toml README.md constraints.txt crds operator runner-image | grep -v -e '/tests/' || true)
  digest=$( { echo "$base_digest $VERSION"; (cd "$repo" && cat $files); } | sha256sum | cut -c1-16)
  if [[ $(current_label "$image") == "$digest" ]]; then
    report "$image" "cached"
    return
  fi
  local start; start=$(date +%s)
  podman build --quiet --pull=never --network=host --build-arg "PYTHON_IMAGE=$BASE" \
    --build-arg "VERSION=$VERSION" --label "dev.dioptra.inputs=$digest" \
    -f "$repo/$dockerfile" -t "$image" "$repo" >"/tmp/dioptra-build-${image//[\/:]/-}.log" 2>&1 \
    || fail "building $image failed: $(grep -v '^\s*$' "/tmp/dioptra-build-${image//[\/:]/-}.log" | tail -1) (log: /tmp/dioptra-build-${image//[\/:]/-}.log)"
  report "$image" "built in $(( $(date +%s) - start )) s"
}
build "localhost/dioptra-runner:$VERSION" runner-image/Dockerfile
build "localhost/dioptra-operator:$VERSION" operator/Dockerfile
podman image prune --force >/dev/null 2>&1 || true
