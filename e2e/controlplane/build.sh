#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager at the Kubernetes
# release pinned in go.mod (module sources from the Go module proxy, checked
# against go.sum) and caches them in
#   ${SWITCHBOARD_K8S_CACHE:-$HOME/.cache/switchboard/k8s}/<k8s version>/
#
# Prints ONLY that directory on stdout; progress goes to stderr. A warm run
# (all three binaries present and the stamp matches) does not call `go` at all.
#
# Environment:
#   SWITCHBOARD_K8S_CACHE       cache root (default ~/.cache/switchboard/k8s)
#   SWITCHBOARD_K8S_BUILD_JOBS  `go build -p` (default: Go's, = number of CPUs)
#   SWITCHBOARD_K8S_REBUILD=1   ignore the stamp and build again
#
# Cold build (empty Go module and build caches, Go 1.26, 2 cores shared with
# other builds): 8 min 44 s wall, 585 s CPU, 1.9 GB peak RSS; it downloads
# ~550 MB of module sources (kept in the module cache); its ~1.6 GB build
# cache is private to the build and deleted afterwards. The three
# stripped binaries take 211 MB. Needs Go >= 1.24 (no C compiler: CGO is off);
# without one, go-toolchain.sh fetches a pinned Go (~70 MB download, ~240 MB).
set -euo pipefail
exec 3>&1 1>&2 # stdout is reserved for the result
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# The pinned versions are read from go.mod so there is one source of truth.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' go.mod)
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' go.mod)
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
  echo "build.sh: cannot read the k8s.io/kubernetes / etcd versions from $here/go.mod" >&2
  exit 1
fi
k8s_minor=${k8s_version#v1.}
k8s_minor=${k8s_minor%%.*}

# The version kube-apiserver reports (/version) and derives its compatibility
# (emulation) version from, as the release build sets it.
pkg_version=k8s.io/component-base/version
client_version=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in $pkg_version $client_version; do
  ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# What the binaries are made from: a change to any of these rebuilds (go.mod
# without its comments, so editing those does not cost a build).
inputs_hash=$( { sed 's|//.*||' go.mod | awk NF; cat go.sum cmd/*/main.go; echo "$ldflags"; } \
  | sha256sum | cut -c1-16)
stamp_text="kubernetes=$k8s_version etcd=$etcd_version inputs=$inputs_hash"

cache_root="${SWITCHBOARD_K8S_CACHE:-${HOME:?HOME is not set}/.cache/switchboard/k8s}"
out="$cache_root/$k8s_version"
bins=(etcd kube-apiserver kube-controller-manager)

is_fresh() {
  [ "${SWITCHBOARD_K8S_REBUILD:-}" = 1 ] && return 1
  [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp_text" ] || return 1
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}

if is_fresh; then
  echo "$out" >&3
  exit 0
fi

mkdir -p "$cache_root"
# Parallel callers (several test binaries starting at once) wait for one build.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  flock 9
  if is_fresh; then
    echo "$out" >&3
    exit 0
  fi
fi

# A Go >= 1.24: the one on PATH, or a pinned toolchain fetched once from the
# Go module proxy (go-toolchain.sh says how and checks it).
go_bin=$("$here/go-toolchain.sh")
export PATH="$go_bin:$PATH"

echo "building etcd $etcd_version, kube-apiserver and kube-controller-manager $k8s_version with $(go version | awk '{print $3}')"
echo "  into $out (a cold build takes ~10 min on 2 cores; later runs reuse it)"
start=$(date +%s)

staging="$cache_root/.build-$k8s_version-$$"
rm -rf "$staging"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT

jobs=()
[ -n "${SWITCHBOARD_K8S_BUILD_JOBS:-}" ] && jobs=(-p "$SWITCHBOARD_K8S_BUILD_JOBS")
export CGO_ENABLED=0 GOWORK=off GOFLAGS=
# A private build cache, deleted with the staging directory: once the binaries
# are cached it would never be read again (a new pin rebuilds everything
# anyway), and it is ~1.6 GB a CI machine's disk needs for the Rust build.
export GOCACHE="$staging/go-build"
go build "${jobs[@]}" -mod=readonly -trimpath -buildvcs=false -ldflags="$ldflags" \
  -o "$staging/" ./cmd/etcd ./cmd/kube-apiserver ./cmd/kube-controller-manager

mkdir -p "$out"
rm -f "$out/stamp"
for b in "${bins[@]}"; do mv -f "$staging/$b" "$out/$b"; done
printf '%s\n' "$stamp_text" >"$out/stamp"

echo "built in $(( $(date +%s) - start ))s: $(cd "$out" && du -ch "${bins[@]}" | tail -1 | cut -f1) in $out"
echo "$out" >&3
