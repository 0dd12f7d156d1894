#!/usr/bin/env bash
# Builds what a one-node Kubernetes cluster on this machine runs next to the
# local control plane (e2e/controlplane):
#   kubelet, kube-proxy, kube-scheduler  at the k8s.io/kubernetes release
#                                        go.mod pins (the control plane's)
#   containerd, containerd-shim-runc-v2, ctr, runc, CNI bridge/host-local/
#   loopback/portmap                     from their own modules (upstream.txt)
#   pause, netcheck                      cmd/pause (a static Go pause process),
#                                        cmd/netcheck (the node test's HTTP probe)
#   coredns                              the cluster DNS: dns/main.go, CoreDNS
#                                        with the plugins the node uses, from
#                                        its own module (dns/go.mod)
# and caches them in
#   ${SWITCHBOARD_K8S_CACHE:-$HOME/.cache/switchboard/k8s}/node-<k8s version>/
# (the CNI plugins in its cni/ subdirectory; CoreDNS with a stamp of its own,
# coredns.stamp, so a CoreDNS bump does not rebuild kubelet).
#
# Prints ONLY that directory on stdout; progress goes to stderr. A warm run
# (every binary present and the stamp matches) does not call `go` at all.
#
# Prerequisites: Go >= 1.26 (CoreDNS's go.mod; go-toolchain.sh fetches
# one), a C compiler, pkg-config and libseccomp-dev (runc is built with cgo
# and seccomp, as its releases are; scripts/test installs them with apt-get).
#
# Environment:
#   SWITCHBOARD_K8S_CACHE       cache root (default ~/.cache/switchboard/k8s)
#   SWITCHBOARD_K8S_BUILD_JOBS  `go build -p` (default: Go's, = number of CPUs)
#   SWITCHBOARD_K8S_REBUILD=1   ignore the stamp and build again
#
# Cold build (warm Go module cache, empty build cache, Go 1.26.8, `go build
# -p 1` via SWITCHBOARD_K8S_BUILD_JOBS=1, on 2 cores shared with other builds
# at a load average of ~7): 18 min 32 s wall, 1.5 GB peak RSS; most of it is
# kubelet. The binaries take 326 MB. With the cores to itself and Go's
# default -p it is several times faster; scripts/test counts it in the cold
# CI budget. CoreDNS (dns/, its own stamp) took 3 min 39 s with the cores
# shared at a load average of ~6 (a full CoreDNS build, every plugin, took
# 17 min there). The modules it downloads beyond the control plane's stay in
# the Go module cache (not measured separately).
# CoreDNS's go.mod needs Go >= 1.26 (containerd's 1.25; the pinned toolchain
# e2e/controlplane/go-toolchain.sh fetches is 1.26.8).
set -euo pipefail
exec 3>&1 1>&2 # stdout is reserved for the result
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# The node must run the control plane's Kubernetes release: both wrapper
# modules pin it, and a bump that changes one and not the other stops here.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' go.mod)
cp_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' ../controlplane/go.mod)
if [ -z "$k8s_version" ] || [ "$k8s_version" != "$cp_version" ]; then
  echo "build.sh: e2e/node/go.mod pins k8s.io/kubernetes '${k8s_version}' but e2e/controlplane/go.mod pins '${cp_version}'; they must agree" >&2
  exit 1
fi
k8s_minor=${k8s_version#v1.}
k8s_minor=${k8s_minor%%.*}

ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

upstream=$(grep -v '^#' upstream.txt | awk NF)
inputs_hash=$( { sed 's|//.*||' go.mod | awk NF; cat go.sum cmd/*/main.go; echo "$upstream"; echo "$ldflags"; } \
  | sha256sum | cut -c1-16)
stamp_text="kubernetes=$k8s_version inputs=$inputs_hash"

cache_root="${SWITCHBOARD_K8S_CACHE:-${HOME:?HOME is not set}/.cache/switchboard/k8s}"
out="$cache_root/node-$k8s_version"
bins=(kubelet kube-proxy kube-scheduler pause netcheck containerd containerd-shim-runc-v2 ctr runc
  cni/bridge cni/host-local cni/loopback cni/portmap)

# CoreDNS: the dns module, pinned by its go.mod and go.sum.
dns_version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/coredns/coredns") { print $(i + 1); exit } }' dns/go.mod)
dns_stamp_text="coredns=$dns_version inputs=$(cat dns/go.mod dns/go.sum dns/main.go | sha256sum | cut -c1-16)"

node_fresh() {
  [ "${SWITCHBOARD_K8S_REBUILD:-}" = 1 ] && return 1
  [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp_text" ] || return 1
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}

dns_fresh() {
  [ "${SWITCHBOARD_K8S_REBUILD:-}" = 1 ] && return 1
  [ "$(cat "$out/coredns.stamp" 2>/dev/null)" = "$dns_stamp_text" ] && [ -x "$out/coredns" ]
}

is_fresh() { node_fresh && dns_fresh; }

if is_fresh; then
  echo "$out" >&3
  exit 0
fi

mkdir -p "$cache_root"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.node.lock"
  flock 9
  if is_fresh; then
    echo "$out" >&3
    exit 0
  fi
fi

for tool in cc pkg-config; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "build.sh: runc needs '$tool' (apt-get install gcc pkg-config libseccomp-dev)" >&2
    exit 1
  }
done
pkg-config --exists libseccomp || {
  echo "build.sh: runc needs libseccomp's headers (apt-get install libseccomp-dev)" >&2
  exit 1
}

go_bin=$("$here/../controlplane/go-toolchain.sh" 1.26)
export PATH="$go_bin:$PATH"

# The module `go mod download` fetched into the module cache, after checking
# its hash against the pinned one. Prints its directory.
module_dir() {
  local module=$1 version=$2 sum=$3 info got
  info=$(go mod download -json "$module@$version")
  got=$(printf '%s\n' "$info" | awk -F'"' '$2 == "Sum" { print $4 }')
  if [ "$got" != "$sum" ]; then
    echo "build.sh: $module@$version has hash '$got', pins say '$sum'" >&2
    return 1
  fi
  printf '%s\n' "$info" | awk -F'"' '$2 == "Dir" { print $4 }'
}

jobs=()
[ -n "${SWITCHBOARD_K8S_BUILD_JOBS:-}" ] && jobs=(-p "$SWITCHBOARD_K8S_BUILD_JOBS")
export GOWORK=off GOFLAGS= GOTOOLCHAIN=local

if ! dns_fresh; then
  echo "building CoreDNS $dns_version (dns/main.go) into $out"
  dns_start=$(date +%s)
  dns_staging="$cache_root/.build-dns-$dns_version-$$"
  rm -rf "$dns_staging"
  mkdir -p "$dns_staging"
  trap 'rm -rf "$dns_staging"' EXIT
  (cd dns && GOCACHE="$dns_staging/go-build" CGO_ENABLED=0 go build "${jobs[@]}" -mod=readonly \
    -trimpath -buildvcs=false -ldflags="-s -w" -o "$dns_staging/coredns" .)
  mkdir -p "$out"; rm -f "$out/coredns.stamp"
  mv -f "$dns_staging/coredns" "$out/coredns"
  printf "%s\n" "$dns_stamp_text" >"$out/coredns.stamp"
  rm -rf "$dns_staging"
  echo "CoreDNS built in $(( $(date +%s) - dns_start ))s"
fi
if node_fresh; then
  echo "$out" >&3
  exit 0
fi

echo "building the local node's binaries (kubelet, kube-proxy, kube-scheduler $k8s_version, containerd, runc, CNI plugins) with $(go version | awk '{print $3}')"
echo "  into $out (a cold build takes several minutes; later runs reuse it)"
start=$(date +%s)

staging="$cache_root/.build-node-$k8s_version-$$"
rm -rf "$staging"
mkdir -p "$staging/cni"
trap 'rm -rf "$staging"' EXIT

# A private build cache, deleted with the staging directory (see
# e2e/controlplane/build.sh for why).
export GOCACHE="$staging/go-build"

CGO_ENABLED=0 go build "${jobs[@]}" -mod=readonly -trimpath -buildvcs=false -ldflags="$ldflags" \
  -o "$staging/" ./cmd/kubelet ./cmd/kube-proxy ./cmd/kube-scheduler ./cmd/pause ./cmd/netcheck

# The upstream modules: downloaded through the module proxy, checked against
# the hash pinned in upstream.txt, built in their module directory with their
# own go.sum.
while read -r module version sum pkgs; do
  dir=$(module_dir "$module" "$version" "$sum")
  read -r -a pkg_list <<<"$pkgs"
  case "$module" in
    github.com/containerd/containerd/v2)
      (cd "$dir" && CGO_ENABLED=0 go build "${jobs[@]}" -mod=readonly -trimpath -buildvcs=false \
        -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version" \
        -o "$staging/" "${pkg_list[@]}") ;;
    github.com/opencontainers/runc)
      (cd "$dir" && CGO_ENABLED=1 go build "${jobs[@]}" -mod=readonly -trimpath -buildvcs=false \
        -tags seccomp -ldflags="-s -w -X main.version=${version#v}" \
        -o "$staging/runc" "${pkg_list[@]}") ;;
    github.com/containernetworking/plugins)
      (cd "$dir" && CGO_ENABLED=0 go build "${jobs[@]}" -mod=readonly -trimpath -buildvcs=false \
        -ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$version" \
        -o "$staging/cni/" "${pkg_list[@]}") ;;
    *)
      echo "build.sh: upstream.txt names $module, which build.sh does not know how to build" >&2
      exit 1 ;;
  esac
done <<<"$upstream"

mkdir -p "$out/cni"
rm -f "$out/stamp"
for b in "${bins[@]}"; do mv -f "$staging/$b" "$out/$b"; done
printf '%s\n' "$stamp_text" >"$out/stamp"

echo "built in $(( $(date +%s) - start ))s: $(cd "$out" && du -ch "${bins[@]}" | tail -1 | cut -f1) in $out"
echo "$out" >&3
