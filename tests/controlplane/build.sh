#!/usr/bin/env bash
# Builds the upstream control-plane binaries into $1/bin (default .tools/controlplane) from the
# pinned Go modules beside this script, and records the pins in a stamp so `make tools` rebuilds
# only when a pin changes. Nothing here is ours but the pins: the binaries are upstream's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-.tools/controlplane}" && cd "${1:-.tools/controlplane}" && pwd)
mkdir -p "$out/bin"
k8s_version=$(go -C "$here/kubernetes" list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${k8s_version#v1.}; minor=${minor%%.*}
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor"
ldflags="$ldflags -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
export CGO_ENABLED=0
start=$(date +%s)
(cd "$here/etcd" && go build -ldflags="-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
echo "built etcd in $(( $(date +%s) - start )) s"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  t=$(date +%s)
  (cd "$here/kubernetes" && go build -ldflags="$ldflags" -o "$out/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  echo "built $cmd in $(( $(date +%s) - t )) s"
done
echo "control plane built in $(( $(date +%s) - start )) s"
