#!/usr/bin/env bash
# End-to-end check of Switchboard on a throwaway kind cluster: the images the
# Dockerfile builds, the Helm chart, the operator and a real ChatCluster.
#
#   e2e/kind/run.sh [--keep] [--name NAME] [--no-build]
#   e2e/kind/run.sh --install-tools DIR
#
# In order:
#   1. builds the data-plane image (Dockerfile target `switchboard`) and the
#      operator image (target `operator`) with docker (BuildKit);
#   2. creates a kind cluster from e2e/kind/cluster.yaml (node image pinned
#      there) with its own kubeconfig, so ~/.kube/config is left alone;
#   3. `kind load docker-image`s both images (nothing is pushed anywhere);
#   4. runs the e2e suite, e2e/suite.sh, against it (the same suite the local
#      node runs in scripts/test): the chart, the minimal ChatCluster with
#      every pod Ready, a smoke check, scaling, and a chat across a gateway
#      pod's deletion (see that script for the steps).
# On failure the suite prints and saves its diagnostics (objects, events,
# descriptions, the operator's and data plane's logs), and this script adds
# `kind export logs`, under the artifacts directory. On exit the
# cluster is deleted, unless --keep (the cluster is only ever deleted if this
# run created it).
#
# Options:
#   --keep           keep the cluster (and print how to reach it)
#   --name NAME      kind cluster name (default: $KIND_CLUSTER_NAME or switchboard-e2e)
#   --no-build       use the images already tagged locally instead of building
#   --install-tools DIR
#                    download kind, helm and kubectl at the versions pinned
#                    below into DIR (sha256-checked against the checksum each
#                    release publishes) and exit; CI runs this, then puts DIR
#                    on PATH
#
# Environment:
#   E2E_ARTIFACTS        where diagnostics go on failure (default: a temp dir, printed)
#   E2E_IMAGE_TAG        tag of the two local images (default: e2e)
#   E2E_READY_TIMEOUT    how long the ChatCluster may take to become Ready (default: 10m)
#   E2E_STRICT_TOOLS=1   fail instead of warn when a tool is not the pinned version
#                        (the default under CI)
#
# Needs: docker with a running engine, kind, helm, kubectl, curl. The cluster
# runs redis:7.4 and postgres:17 (the CRD's defaults), which its nodes pull
# from Docker Hub.
set -euo pipefail

# ---------------------------------------------------------------- pins
# The versions this script is written and checked against. kind's node image
# (Kubernetes v1.34.0) is pinned in cluster.yaml; kubectl is the same minor.
KIND_VERSION=v0.30.0
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.34.4

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/e2e/kind"

section() { printf '\n==== %s ====\n' "$*"; }
die() {
  echo "run.sh: $*" >&2
  exit 1
}

usage() { sed -n '2,/^set -euo pipefail$/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- tools

# Prints the version a tool reports, e.g. v0.30.0.
tool_version() {
  case "$1" in
    kind) kind version | awk '{ print $2 }' ;;
    helm) helm version --template '{{.Version}}' ;;
    kubectl) kubectl version --client -o yaml | awk '$1 == "gitVersion:" { print $2; exit }' ;;
  esac
}

check_tools() {
  local missing=() t
  for t in docker kind helm kubectl curl; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if ((${#missing[@]})); then
    die "missing: ${missing[*]} (e2e/kind/run.sh --install-tools DIR installs kind, helm and kubectl)"
  fi
  local strict=${E2E_STRICT_TOOLS:-}
  [ -z "$strict" ] && [ -n "${CI:-}" ] && strict=1
  local want have
  for t in kind helm kubectl; do
    case "$t" in
      kind) want=$KIND_VERSION ;;
      helm) want=$HELM_VERSION ;;
      kubectl) want=$KUBECTL_VERSION ;;
    esac
    have=$(tool_version "$t" 2>/dev/null || true)
    if [ "$have" != "$want" ]; then
      if [ "$strict" = 1 ]; then
        die "$t is ${have:-unknown}, this script pins $want (--install-tools DIR)"
      fi
      echo "warning: $t is ${have:-unknown}, this script is checked with $want" >&2
    fi
  done
  docker info >/dev/null 2>&1 || die "cannot reach the docker engine ('docker info' fails)"
  # The Dockerfile uses RUN --mount, which needs BuildKit (docker buildx).
  if [ "$build" = 1 ] && ! docker buildx version >/dev/null 2>&1; then
    die "docker buildx (BuildKit) is needed to build the Dockerfile"
  fi
}

# Downloads $1 to $3 and checks it against the sha256 published at $2 (the
# first word of that file: kubectl's holds only the hash, kind's and helm's
# "hash  name").
fetch_verified() {
  local url=$1 sum_url=$2 out=$3 want have
  curl -fsSL --proto '=https' --retry 3 -o "$out" "$url"
  want=$(curl -fsSL --proto '=https' --retry 3 "$sum_url" | awk 'NR == 1 { print $1 }')
  have=$(sha256sum "$out" | awk '{ print $1 }')
  if [ -z "$want" ] || [ "$want" != "$have" ]; then
    die "checksum mismatch for $url (want '$want', got '$have')"
  fi
}

install_tools() {
  local dir=$1 os=linux arch
  case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m)" ;;
  esac
  [ "$(uname -s)" = Linux ] || die "--install-tools fetches Linux binaries only"
  mkdir -p "$dir"
  # Global, not local: the EXIT trap (this path runs before the main one is
  # set) reads it after the function has returned.
  tools_tmp=$(mktemp -d)
  trap 'rm -rf "$tools_tmp"' EXIT
  local tmp=$tools_tmp

  local kind_url="https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-$os-$arch"
  fetch_verified "$kind_url" "$kind_url.sha256sum" "$tmp/kind"

  local kubectl_url="https://dl.k8s.io/release/$KUBECTL_VERSION/bin/$os/$arch/kubectl"
  fetch_verified "$kubectl_url" "$kubectl_url.sha256" "$tmp/kubectl"

  local helm_url="https://get.helm.sh/helm-$HELM_VERSION-$os-$arch.tar.gz"
  fetch_verified "$helm_url" "$helm_url.sha256sum" "$tmp/helm.tar.gz"
  tar -xzf "$tmp/helm.tar.gz" -C "$tmp" "$os-$arch/helm"

  install -m 0755 "$tmp/kind" "$tmp/kubectl" "$tmp/$os-$arch/helm" "$dir/"
  echo "installed into $dir: kind $KIND_VERSION, helm $HELM_VERSION, kubectl $KUBECTL_VERSION"
}

# ---------------------------------------------------------------- arguments

keep=0
build=1
cluster="${KIND_CLUSTER_NAME:-switchboard-e2e}"
while (($#)); do
  case "$1" in
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    --name)
      [ $# -ge 2 ] || die "--name needs a value"
      cluster=$2
      shift
      ;;
    --install-tools)
      [ $# -ge 2 ] || die "--install-tools needs a directory"
      install_tools "$2"
      exit 0
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

tag="${E2E_IMAGE_TAG:-e2e}"
# Not :latest, so the kubelet's default pull policy (IfNotPresent) uses the
# loaded image for the gateway and worker pods the operator creates.
DATA_IMAGE="switchboard:$tag"
DATA_IMAGE_NEXT="switchboard:$tag-next"
OPERATOR_IMAGE="switchboard-operator:$tag"

# ---------------------------------------------------------------- cleanup

workdir=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-kind.XXXXXX")
artifacts="${E2E_ARTIFACTS:-$workdir/artifacts}"
export KUBECONFIG="$workdir/kubeconfig"
created=0 # set when this run creates the cluster: only then is it deleted
cluster_up=0 # set once it exists: diagnostics only make sense from then on

# The suite printed and saved its own diagnostics; the nodes' logs are kind's.
dump_node_logs() {
  mkdir -p "$artifacts"
  kind export logs "$artifacts/kind-logs" --name "$cluster" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ "$cluster_up" = 1 ]; then
    dump_node_logs
  fi
  if [ "$created" = 1 ] && [ "$keep" = 0 ]; then
    section "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" --kubeconfig "$KUBECONFIG"
  elif [ "$created" = 1 ]; then
    printf '\nkept kind cluster %s:\n  export KUBECONFIG=%s\n  kind delete cluster --name %s   # when done\n' \
      "$cluster" "$KUBECONFIG" "$cluster"
  fi
  # $workdir holds the kubeconfig (needed with --keep) and, by default, the
  # diagnostics of a failed run.
  local keep_workdir=$keep
  if [ "$rc" -ne 0 ] && [ "$cluster_up" = 1 ]; then
    echo "FAILED (exit $rc); diagnostics in $artifacts" >&2
    case "$artifacts" in "$workdir"/*) keep_workdir=1 ;; esac
  elif [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc)" >&2
  fi
  [ "$keep_workdir" = 1 ] || rm -rf "$workdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- run

start=$(date +%s)
check_tools
# Before the (long) build: never touch a cluster this run did not create.
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named $cluster exists already: delete it (kind delete cluster --name $cluster) or pass --name"
fi

if [ "$build" = 1 ]; then
  section "build images"
  # One Dockerfile, two targets: `switchboard` (gateway, worker, CLI) and
  # `operator`. The second build reuses the first one's build stage. No
  # provenance attestation: with Docker's containerd image store, `docker
  # save` (which `kind load` uses) would reference its missing blobs and the
  # import into the nodes would fail ("content digest ... not found").
  sha=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true)
  DOCKER_BUILDKIT=1 docker build --provenance=false --build-arg SWITCHBOARD_GIT_SHA="$sha" \
    --target switchboard -t "$DATA_IMAGE" "$ROOT"
  DOCKER_BUILDKIT=1 docker build --provenance=false --build-arg SWITCHBOARD_GIT_SHA="$sha" \
    --target operator -t "$OPERATOR_IMAGE" "$ROOT"
else
  docker image inspect "$DATA_IMAGE" "$OPERATOR_IMAGE" >/dev/null ||
    die "--no-build: $DATA_IMAGE and $OPERATOR_IMAGE must exist locally"
fi

section "kind cluster $cluster"
# Set before creating: `kind delete cluster` is idempotent and removes what a
# half-finished create left.
created=1
kind create cluster --name "$cluster" --config "$HERE/cluster.yaml" \
  --kubeconfig "$KUBECONFIG" --wait 5m
cluster_up=1
kubectl wait --for=condition=Ready nodes --all --timeout=3m
kubectl get nodes -o wide

section "load images"
# The data plane once more under another tag: the suite rolls the gateways
# to it mid-conversation.
docker tag "$DATA_IMAGE" "$DATA_IMAGE_NEXT"
kind load docker-image --name "$cluster" "$DATA_IMAGE" "$DATA_IMAGE_NEXT" "$OPERATOR_IMAGE"

section "the e2e suite (e2e/suite.sh)"
E2E_DATA_IMAGE="$DATA_IMAGE" E2E_DATA_IMAGE_NEXT="$DATA_IMAGE_NEXT" \
  E2E_OPERATOR_IMAGE="$OPERATOR_IMAGE" E2E_ARTIFACTS="$artifacts" \
  "$ROOT/e2e/suite.sh"

printf '\nkind e2e passed in %ss\n' "$(($(date +%s) - start))"
