#!/usr/bin/env bash
# Prints the `bin` directory of a Go toolchain new enough to build the control
# plane (build.sh's `go`) or the local node (e2e/node/build.sh), fetching a
# pinned one when the machine has none.
#
#   go-toolchain.sh [MIN]     MIN: the oldest usable Go, e.g. 1.25 (default 1.24)
#
# Order: the `go` on PATH when it is >= MIN; else the pinned toolchain
# cached under ${SWITCHBOARD_GO_CACHE:-$HOME/.cache/switchboard/go}; else that
# toolchain is downloaded once from the Go module proxy, as the module
# `golang.org/toolchain@v0.0.1-<version>.linux-<arch>` (the same zip the `go`
# command fetches for GOTOOLCHAIN=<version>), and checked against the SHA-256
# pinned below before anything in it runs. A Debian 12 machine's own Go
# (1.19) is too old to switch toolchains by itself, hence the direct download:
# it needs only curl and unzip.
#
# Prints ONLY the directory on stdout; progress goes to stderr.
#
# Environment:
#   GOPROXY                first proxy of the list is used (default proxy.golang.org)
#   SWITCHBOARD_GO_CACHE   where the toolchain is unpacked (~240 MB)
set -euo pipefail
exec 3>&1 1>&2

min_go=${1:-1.24}
[[ "$min_go" =~ ^[0-9]+\.[0-9]+$ ]] || {
  echo "go-toolchain.sh: MIN must look like 1.25, not '$min_go'" >&2
  exit 1
}
# The pinned toolchain and the SHA-256 of its module zip, per architecture
# (sha256sum of the zip the proxy serves for the version below).
version=go1.26.8
declare -A zip_sha256=(
  [amd64]=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
  [arm64]=02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99
)

# `go1.26.8` / `go1.24` / `go1.25rc1` -> "1 26" (major minor), for comparison.
go_minor() { sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/' <<<"$1"; }
new_enough() {
  local major minor want_major want_minor
  read -r major minor <<<"$(go_minor "$1")"
  read -r want_major want_minor <<<"$(go_minor "go$min_go")"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  ((major > want_major || (major == want_major && minor >= want_minor)))
}

if command -v go >/dev/null 2>&1; then
  have=$(go env GOVERSION 2>/dev/null || go version | awk '{print $3}')
  if new_enough "$have"; then
    dirname "$(command -v go)" >&3
    exit 0
  fi
  echo "go-toolchain.sh: the go on PATH is $have; >= go$min_go is needed"
fi
new_enough "$version" || {
  echo "go-toolchain.sh: the pinned $version is older than go$min_go: install Go >= $min_go" >&2
  exit 1
}

case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *)
    echo "go-toolchain.sh: no pinned Go toolchain for $(uname -m); install Go >= $min_go" >&2
    exit 1
    ;;
esac
module="golang.org/toolchain@v0.0.1-$version.linux-$arch"
cache="${SWITCHBOARD_GO_CACHE:-${HOME:?HOME is not set}/.cache/switchboard/go}"
bin="$cache/$module/bin"
if [ -x "$bin/go" ] && [ "$("$bin/go" env GOVERSION 2>/dev/null)" = "$version" ]; then
  echo "$bin" >&3
  exit 0
fi

for tool in curl unzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "go-toolchain.sh: '$tool' is needed to fetch Go $version (apt-get install -y curl unzip)" >&2
    exit 1
  }
done
proxy="${GOPROXY:-https://proxy.golang.org}"
proxy="${proxy%%[,|]*}"
case "$proxy" in
  http://* | https://*) ;;
  *) proxy=https://proxy.golang.org ;; # "direct"/"off": the toolchain is only served by a proxy
esac
url="$proxy/golang.org/toolchain/@v/v0.0.1-$version.linux-$arch.zip"

mkdir -p "$cache"
staging=$(mktemp -d "$cache/.fetch-XXXXXX")
trap 'rm -rf "$staging"' EXIT
echo "fetching Go $version ($arch, ~70 MB) from $proxy"
curl -fsSL --retry 3 -o "$staging/go.zip" "$url"
got=$(sha256sum "$staging/go.zip" | cut -d' ' -f1)
if [ "$got" != "${zip_sha256[$arch]}" ]; then
  echo "go-toolchain.sh: $url has SHA-256 $got, expected ${zip_sha256[$arch]}; not using it" >&2
  exit 1
fi
unzip -q "$staging/go.zip" -d "$staging/tree"
rm -rf "${cache:?}/$module"
mkdir -p "$(dirname "$cache/$module")"
mv "$staging/tree/$module" "$cache/$module"
"$bin/go" version
echo "$bin" >&3
