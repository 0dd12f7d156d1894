#!/usr/bin/env bash
# The end-to-end suite: Switchboard installed the way docs/quickstart.md
# says, on whatever cluster KUBECONFIG names, its pods really running. Two
# runners call it: e2e/kind/run.sh on a kind cluster (Docker), and
# `switchboard-node --images BIN_DIR -- e2e/suite.sh` on the local node
# (scripts/test). It never creates or deletes the cluster.
#
# In order:
#   1. creates the chat namespace and `helm install`s charts/switchboard-operator
#      into its own namespace with watchNamespace set to it, the operator image
#      given (pullPolicy Never: a missing image fails instead of pulling), and
#      waits for the operator Deployment's rollout;
#   2. applies examples/chatcluster-minimal.yaml with spec.gateway.image and
#      spec.worker.image set to the data-plane image (and the Redis and
#      PostgreSQL images when given) and waits for its Ready condition, then
#      for every pod of the cluster to be Running and Ready, none of them
#      (nor the operator) having restarted;
#   3. smoke check: the gateway and worker Deployments run the data-plane
#      image; through a port-forward to the gateway Service, GET /readyz
#      answers "ready" and GET /metrics is not served there; the pods'
#      metrics port (9090) serves the switchboard_gateway_* metrics;
#   4. scales the gateways from 2 to 3 (spec.gateway.replicas.min) and waits
#      for the third pod to be ready;
#   5. chat through the gateway Service (e2e/chat-check.sh): two wallets sign
#      in with the `switchboard` CLI from a client pod running the data-plane
#      image, one sends 20 direct messages to the other; half-way the gateway
#      pod holding the listener's socket (the one whose metrics show an open
#      connection) is deleted; every send must be answered and every message
#      received exactly once, in seq order;
#   6. with E2E_DATA_IMAGE_NEXT, the same chat check while the gateways roll
#      to that image (the Deployment's rolling update, each old pod draining);
#   7. turns the gateway Service into a NodePort and, from this machine at the
#      node's InternalIP, GET /readyz, and (with E2E_CLI) the same chat check
#      with the CLI here;
#   8. deletes that ChatCluster and applies examples/chatcluster-redis-cluster.yaml
#      (3 shards, 1 replica each): Ready with every Redis node seeing the
#      whole cluster, a chat, then a primary's pod killed without grace; the
#      replica takes over, the pod comes back, the cluster is whole and the
#      ChatCluster Ready again, the messages from before the kill replay
#      whole, and a fresh pair chats;
#   9. autoscaling by connections on that cluster (3 per gateway, 1-2
#      gateways): idle it scales in to 1, 6 CLI listeners scale it out to 2,
#      6 more spread over both, then a target of 12 scales in to 1: the
#      least loaded gateway goes, and exactly the sockets it held see 1012
#      and reconnect, so the survivor holds all 12.
# On failure it prints `kubectl get all,chatclusters,pvc,events -A`, the
# ChatCluster's description, the pods' descriptions and the operator's and
# data plane's logs, and saves them under E2E_ARTIFACTS.
#
# Environment:
#   KUBECONFIG           the cluster (required)
#   E2E_DATA_IMAGE       the data-plane image (gateway, worker, CLI), present on the nodes (required)
#   E2E_OPERATOR_IMAGE   the operator image, present on the nodes (required)
#   E2E_DATA_IMAGE_NEXT  the data-plane image under another name, for the rolling update (step 6)
#   E2E_REDIS_IMAGE      spec.redis.managed.image (default: the CRD's default)
#   E2E_POSTGRES_IMAGE   spec.postgres.managed.image (default: the CRD's default)
#   E2E_CLI              a `switchboard` CLI binary on this machine (step 6; default: probe only)
#   E2E_ARTIFACTS        where diagnostics go on failure (default: a temp dir, printed)
#   E2E_READY_TIMEOUT    how long the ChatCluster may take to become Ready (default: 10m)
#
# Needs: helm, kubectl, curl on PATH.
set -euo pipefail
# With pipefail, a reader that stops early (`head`, `awk … exit`, `grep -q`)
# can fail the whole pipeline when the writer then gets SIGPIPE (exit 141):
# readers of a command's output here read it to the end.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

: "${KUBECONFIG:?KUBECONFIG must name the cluster}"
DATA_IMAGE=${E2E_DATA_IMAGE:?E2E_DATA_IMAGE must name the data-plane image}
OPERATOR_IMAGE=${E2E_OPERATOR_IMAGE:?E2E_OPERATOR_IMAGE must name the operator image}

# Names used below. The operator's Deployment is named after the release
# (the chart's fullname is the release name when it contains the chart name).
OPERATOR_NS=switchboard-system
RELEASE=switchboard-operator
CHAT_NS=switchboard-e2e
EXAMPLE="$ROOT/examples/chatcluster-minimal.yaml"
CHAT=chat # metadata.name in the example; its gateway Service is "$CHAT-gateway"
RC_EXAMPLE="$ROOT/examples/chatcluster-redis-cluster.yaml"
RC=chat-rc # metadata.name there

section() { printf '\n==== %s ====\n' "$*"; }
die() {
  echo "suite.sh: $*" >&2
  exit 1
}

for t in helm kubectl curl; do
  command -v "$t" >/dev/null 2>&1 || die "missing: $t"
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-e2e.XXXXXX")
artifacts="${E2E_ARTIFACTS:-$workdir/artifacts}"
pf_pid=""

stop_port_forward() {
  if [ -n "$pf_pid" ]; then
    kill "$pf_pid" 2>/dev/null || true
    wait "$pf_pid" 2>/dev/null || true
    pf_pid=""
  fi
}

# Runs a diagnostic command, showing it on the console and saving it.
diag() {
  local name=$1
  shift
  printf '\n---- %s\n' "$*"
  "$@" 2>&1 | tee "$artifacts/$name.txt" || true
}

dump_diagnostics() {
  section "diagnostics (also in $artifacts)"
  mkdir -p "$artifacts"
  diag get-all kubectl get all,chatclusters,pvc,pv,events -A -o wide
  diag describe-chatclusters kubectl describe chatclusters -A
  diag describe-pods kubectl describe pods -n "$CHAT_NS"
  diag operator-logs kubectl logs -n "$OPERATOR_NS" -l app.kubernetes.io/name=switchboard-operator \
    --all-containers --prefix --tail=-1
  diag data-plane-logs kubectl logs -n "$CHAT_NS" -l "app.kubernetes.io/instance=$CHAT" \
    --all-containers --prefix --tail=200 --max-log-requests=20
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  stop_port_forward
  # Background CLI listeners, if any are left.
  local jobs_left
  jobs_left=$(jobs -p)
  [ -z "$jobs_left" ] || kill $jobs_left 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    dump_diagnostics
    echo "FAILED (exit $rc); diagnostics in $artifacts" >&2
    case "$artifacts" in "$workdir"/*) exit "$rc" ;; esac
  fi
  rm -rf "$workdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
kubectl get nodes -o wide

section "install the operator chart"
# The chat's namespace first: with watchNamespace the chart puts the
# operator's Role there.
kubectl create namespace "$CHAT_NS"
helm install "$RELEASE" "$ROOT/charts/switchboard-operator" \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" \
  --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set watchNamespace="$CHAT_NS" \
  --set 'logLevel=info\,switchboard_operator=debug'
kubectl wait --for=condition=Established --timeout=60s crd/chatclusters.switchboard.dev
kubectl -n "$OPERATOR_NS" rollout status "deployment/$RELEASE" --timeout=5m

section "apply $(basename "$EXAMPLE") with image $DATA_IMAGE"
# The minimal example needs no Secret (managed Redis and PostgreSQL; the
# operator generates the session key and the database password).
# An example with the images of this run: the data plane's, and Redis's and
# PostgreSQL's when given; the patched YAML on stdout.
with_images() {
  local patch="{\"spec\":{\"gateway\":{\"image\":\"$DATA_IMAGE\"},\"worker\":{\"image\":\"$DATA_IMAGE\"}"
  [ -n "${E2E_REDIS_IMAGE:-}" ] && patch+=",\"redis\":{\"managed\":{\"image\":\"$E2E_REDIS_IMAGE\"}}"
  [ -n "${E2E_POSTGRES_IMAGE:-}" ] && patch+=",\"postgres\":{\"managed\":{\"image\":\"$E2E_POSTGRES_IMAGE\"}}"
  patch+="}}"
  kubectl patch --local -f "$1" --type merge -p "$patch" -o yaml
}
with_images "$EXAMPLE" >"$workdir/chatcluster.yaml"
kubectl apply -n "$CHAT_NS" -f "$workdir/chatcluster.yaml"

section "wait for chatcluster/$CHAT Ready (up to ${E2E_READY_TIMEOUT:-10m})"
kubectl -n "$CHAT_NS" wait "chatcluster/$CHAT" --for=condition=Ready --timeout="${E2E_READY_TIMEOUT:-10m}"
kubectl -n "$CHAT_NS" get "chatcluster/$CHAT"
# Ready counts what the operator checks; every pod it made must also run.
kubectl -n "$CHAT_NS" wait pods -l "app.kubernetes.io/instance=$CHAT" --for=condition=Ready --timeout=3m
kubectl -n "$CHAT_NS" get pods,pvc -o wide
# Started together with their Redis and PostgreSQL, the gateways and
# workers wait for them instead of exiting: a fresh install restarts
# nothing (neither does the operator).
restarted=$(
  for ns in "$CHAT_NS" "$OPERATOR_NS"; do
    kubectl -n "$ns" get pods -o jsonpath='{range .items[*]}{.metadata.name}{range .status.containerStatuses[*]}{" "}{.restartCount}{end}{"\n"}{end}'
  done | awk '{ for (i = 2; i <= NF; i++) if ($i != 0) { print $1; break } }'
)
[ -z "$restarted" ] || die "containers restarted during the install: $restarted"

section "smoke check"
for component in gateway worker; do
  image=$(kubectl -n "$CHAT_NS" get "deployment/$CHAT-$component" \
    -o jsonpath='{.spec.template.spec.containers[0].image}')
  [ "$image" = "$DATA_IMAGE" ] || die "$CHAT-$component runs '$image', expected $DATA_IMAGE"
  echo "$CHAT-$component runs $image"
done

# Forwards a free local port chosen by kubectl to port $2 of $1 (in the
# chat namespace) and sets `port` to it, read back from kubectl's output.
port_forward() {
  local target=$1 remote=$2 log="$workdir/port-forward-$2.log"
  kubectl -n "$CHAT_NS" port-forward --address 127.0.0.1 "$target" ":$remote" >"$log" 2>&1 &
  pf_pid=$!
  port=""
  for _ in $(seq 1 60); do
    port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$log" | awk 'NR == 1')
    [ -n "$port" ] && return 0
    kill -0 "$pf_pid" 2>/dev/null || break
    sleep 0.5
  done
  die "port-forward to $target:$remote did not start: $(cat "$log")"
}
port_forward "service/$CHAT-gateway" 80
base="http://127.0.0.1:$port"
echo "gateway Service forwarded to $base"

ready=$(curl -fsS --max-time 5 --retry 10 --retry-delay 1 --retry-all-errors "$base/readyz")
[ "$ready" = ready ] || die "GET /readyz answered '$ready', expected 'ready'"
echo "GET /readyz: $ready"

# /metrics is not on the public port (the Service); it has a listener of
# its own on the pods (port "metrics", 9090) for Prometheus.
public_metrics=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$base/metrics")
[ "$public_metrics" = 404 ] || die "GET /metrics on the gateway Service answered $public_metrics, expected 404"
stop_port_forward
port_forward "deployment/$CHAT-gateway" 9090
curl -fsS --max-time 5 --retry 5 --retry-delay 1 --retry-all-errors "http://127.0.0.1:$port/metrics" >"$workdir/metrics.txt"
grep -q '^switchboard_gateway_' "$workdir/metrics.txt" ||
  die "GET /metrics has no switchboard_gateway_* sample: $(head -c 2000 "$workdir/metrics.txt")"
echo "GET /metrics (pod port 9090): $(grep -c '^switchboard_gateway_' "$workdir/metrics.txt") switchboard_gateway_* samples"
stop_port_forward

section "scale the gateways to 3"
kubectl -n "$CHAT_NS" patch "chatcluster/$CHAT" --type merge \
  -p '{"spec":{"gateway":{"replicas":{"min":3}}}}'
for _ in $(seq 1 180); do
  ready_gw=$(kubectl -n "$CHAT_NS" get "deployment/$CHAT-gateway" -o jsonpath='{.status.readyReplicas}')
  [ "${ready_gw:-0}" -ge 3 ] && break
  sleep 1
done
[ "${ready_gw:-0}" -ge 3 ] || die "the gateway Deployment has ${ready_gw:-0} ready replicas, expected 3"
kubectl -n "$CHAT_NS" get pods -l "app.kubernetes.io/instance=$CHAT,app.kubernetes.io/component=gateway" -o wide

section "chat through the gateway Service across a gateway pod deletion"
# The clients run in the cluster (the data-plane image has the CLI), so they
# reach the gateways through the Service as an app would, and a deleted pod
# only drops the sockets it held.
kubectl -n "$CHAT_NS" run chat-client --image="$DATA_IMAGE" --image-pull-policy=Never \
  --restart=Never --command -- sleep 3600
kubectl -n "$CHAT_NS" wait pod/chat-client --for=condition=Ready --timeout=2m
. "$ROOT/e2e/chat-check.sh"
# sb/sb_bg (what chat-check.sh calls) run the CLI in the client pod, or
# (step 7) on this machine.
use_pod_cli() {
  sb() { kubectl -n "$CHAT_NS" exec chat-client -- switchboard "$@"; }
  sb_bg() {
    local out=$1
    shift
    kubectl -n "$CHAT_NS" exec chat-client -- switchboard "$@" >"$out" 2>"$workdir/listen.err" &
    SB_BG_PID=$!
  }
}
use_host_cli() {
  sb() { "$E2E_CLI" "$@"; }
  sb_bg() {
    local out=$1
    shift
    "$E2E_CLI" "$@" >"$out" 2>"$workdir/host-listen.err" &
    SB_BG_PID=$!
  }
}
use_pod_cli
# The gateway pod with an open connection: the listener's (each send is a
# short-lived process that has closed its socket by then). Read through the
# API server's pod proxy from the pod's metrics port.
disrupt() {
  local pod conns victim=""
  for pod in $(kubectl -n "$CHAT_NS" get pods \
    -l "app.kubernetes.io/instance=$CHAT,app.kubernetes.io/component=gateway" \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}'); do
    conns=$(kubectl get --raw "/api/v1/namespaces/$CHAT_NS/pods/$pod:9090/proxy/metrics" |
      awk '$1 == "switchboard_gateway_connections" && !seen { print $2; seen = 1 }')
    if [ "${conns%.*}" -ge 1 ] 2>/dev/null; then victim=$pod; fi
  done
  [ -n "$victim" ] || die "no gateway pod reports the listener's connection"
  echo "chat check: deleting $victim (it holds the listener's socket)"
  kubectl -n "$CHAT_NS" delete pod "$victim" --wait=false
}
gateway_url="http://$CHAT-gateway.$CHAT_NS.svc"
domain=$(kubectl -n "$CHAT_NS" get "chatcluster/$CHAT" -o jsonpath='{.spec.auth.domain}')
mkdir -p "$workdir/chat"
chat_check "$gateway_url" "$gateway_url" "$domain" /tmp 20 "$workdir/chat"

section "chat across a rolling update of the gateways"
# A new gateway image mid-conversation: the Deployment replaces its pods one
# by one (maxUnavailable 0), each old one draining its sockets with 1012;
# the clients reconnect and resync, and nothing may be lost or repeated.
if [ -n "${E2E_DATA_IMAGE_NEXT:-}" ]; then
  disrupt() {
    echo "chat check: rolling the gateways to $E2E_DATA_IMAGE_NEXT"
    kubectl -n "$CHAT_NS" patch "chatcluster/$CHAT" --type merge \
      -p "{\"spec\":{\"gateway\":{\"image\":\"$E2E_DATA_IMAGE_NEXT\"}}}"
  }
  mkdir -p "$workdir/chat-roll"
  chat_check "$gateway_url" "$gateway_url" "$domain" /tmp 20 "$workdir/chat-roll" roll-
  kubectl -n "$CHAT_NS" rollout status "deployment/$CHAT-gateway" --timeout=3m
  # Old pods still draining are Running too, but being deleted.
  images=$(kubectl -n "$CHAT_NS" get pods \
    -l "app.kubernetes.io/instance=$CHAT,app.kubernetes.io/component=gateway" \
    --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}{"\t"}{.spec.containers[0].image}{"\n"}{end}' |
    awk -F '\t' '$1 == "" { print $2 }' | sort -u)
  [ "$images" = "$E2E_DATA_IMAGE_NEXT" ] || die "after the rollout the gateways run: $images"
  echo "every gateway runs $E2E_DATA_IMAGE_NEXT"
else
  echo "(E2E_DATA_IMAGE_NEXT unset: no rolling update)"
fi

section "from this machine through a NodePort"
# As a client outside the cluster reaches it without an Ingress: the
# gateway Service turned NodePort, at the node's InternalIP.
kubectl -n "$CHAT_NS" patch "chatcluster/$CHAT" --type merge \
  -p '{"spec":{"gateway":{"service":{"type":"NodePort"}}}}'
node_port=""
for _ in $(seq 1 60); do
  node_port=$(kubectl -n "$CHAT_NS" get "service/$CHAT-gateway" -o jsonpath='{.spec.ports[0].nodePort}')
  [ -n "$node_port" ] && break
  sleep 1
done
[ -n "$node_port" ] || die "service/$CHAT-gateway got no nodePort after spec.gateway.service.type=NodePort"
node_ip=$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
node_url="http://$node_ip:$node_port"
ready=$(curl -fsS --max-time 5 --retry 10 --retry-delay 1 --retry-all-errors "$node_url/readyz")
[ "$ready" = ready ] || die "GET $node_url/readyz answered '$ready', expected 'ready'"
echo "GET $node_url/readyz: $ready"
if [ -n "${E2E_CLI:-}" ]; then
  # The same chat check with the CLI on this machine, nothing disrupted.
  use_host_cli
  disrupt() { :; }
  mkdir -p "$workdir/host-chat"
  chat_check "$node_url" "$node_url" "$domain" "$workdir/host-chat" 6 "$workdir/host-chat"
  use_pod_cli
else
  echo "(E2E_CLI unset: no chat from this machine, only the probe)"
fi

section "a Redis Cluster: formed, a primary killed, healed, nothing lost"
# Room on the node first: the first ChatCluster goes, and its pods with it.
kubectl -n "$CHAT_NS" delete "chatcluster/$CHAT" --timeout=3m
for _ in $(seq 1 180); do
  [ -z "$(kubectl -n "$CHAT_NS" get pods -l "app.kubernetes.io/instance=$CHAT" -o name)" ] && break
  sleep 1
done
[ -z "$(kubectl -n "$CHAT_NS" get pods -l "app.kubernetes.io/instance=$CHAT" -o name)" ] ||
  die "the pods of chatcluster/$CHAT outlived it by 3 minutes"
with_images "$RC_EXAMPLE" >"$workdir/chatcluster-rc.yaml"
kubectl apply -n "$CHAT_NS" -f "$workdir/chatcluster-rc.yaml"
kubectl -n "$CHAT_NS" wait "chatcluster/$RC" --for=condition=Ready --timeout="${E2E_READY_TIMEOUT:-10m}"
kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.redis}{"\n"}'
rc_pods() {
  kubectl -n "$CHAT_NS" get pods -l "app.kubernetes.io/instance=$RC,app.kubernetes.io/component=redis" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}
# Every node's own view: the cluster ok, all six nodes known, three
# primaries. redis-cli in the pod authenticates from its REDISCLI_AUTH.
cluster_whole() {
  local pod info masters
  for pod in $(rc_pods); do
    info=$(kubectl -n "$CHAT_NS" exec "$pod" -- redis-cli cluster info 2>/dev/null) || return 1
    grep -q '^cluster_state:ok' <<<"$info" || return 1
    grep -q '^cluster_known_nodes:6' <<<"$info" || return 1
    masters=$(kubectl -n "$CHAT_NS" exec "$pod" -- redis-cli cluster nodes 2>/dev/null |
      awk '$3 ~ /master/ && $3 !~ /fail/ { n++ } END { print n + 0 }')
    [ "$masters" = 3 ] || return 1
  done
}
cluster_whole || die "the Redis Cluster is not whole after Ready"
echo "every Redis node: cluster_state ok, 6 nodes, 3 primaries"

rc_url="http://$RC-gateway.$CHAT_NS.svc"
disrupt() { :; }
mkdir -p "$workdir/chat-rc"
chat_check "$rc_url" "$rc_url" "$domain" /tmp 10 "$workdir/chat-rc" rc-

# A primary, killed: no grace, as a node crash would.
victim=""
for pod in $(rc_pods); do
  if kubectl -n "$CHAT_NS" exec "$pod" -- redis-cli role 2>/dev/null |
    awk 'NR == 1 && $0 == "master" { primary = 1 } END { exit !primary }'; then
    victim=$pod
    break
  fi
done
[ -n "$victim" ] || die "no Redis pod says it is a primary"
old_uid=$(kubectl -n "$CHAT_NS" get pod "$victim" -o jsonpath='{.metadata.uid}')
echo "killing $victim (a primary)"
kubectl -n "$CHAT_NS" delete pod "$victim" --grace-period=0 --force
# Its replica takes over, the StatefulSet brings the pod back, and the
# operator's checks see the cluster through it: whole again, and Ready.
for _ in $(seq 1 180); do
  uid=$(kubectl -n "$CHAT_NS" get pod "$victim" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  [ -n "$uid" ] && [ "$uid" != "$old_uid" ] && break
  sleep 1
done
kubectl -n "$CHAT_NS" wait "pod/$victim" --for=condition=Ready --timeout=3m
healed=0
for _ in $(seq 1 90); do
  if cluster_whole; then
    healed=1
    break
  fi
  sleep 2
done
[ "$healed" = 1 ] || die "the Redis Cluster did not heal within 3 minutes of losing $victim"
kubectl -n "$CHAT_NS" wait "chatcluster/$RC" --for=condition=Ready --timeout=3m
kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.redis}{"\n"}'
echo "healed: every Redis node sees the whole cluster again"

# Nothing acknowledged before the kill is lost: the first pair's history
# replays whole, and a fresh pair chats.
alice_rc=$(chat_login "$rc_url" "$domain" /tmp/rc-alice.key)
sb_bg "$workdir/rc-replay.out" listen --key-file /tmp/rc-bob.key --server "$rc_url" --conv "$alice_rc" --count 10
replay=$SB_BG_PID
deadline=$((SECONDS + 60))
while kill -0 "$replay" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
if kill -0 "$replay" 2>/dev/null; then
  kill "$replay" 2>/dev/null || true
  die "the history before the kill did not replay within 60 s: $(cat "$workdir/rc-replay.out")"
fi
for i in $(seq 1 10); do
  [ "$(grep -c " m-$i\$" "$workdir/rc-replay.out")" = 1 ] ||
    die "m-$i not replayed exactly once after the kill: $(cat "$workdir/rc-replay.out")"
done
echo "the 10 messages from before the kill replay, each once"
mkdir -p "$workdir/chat-rc2"
chat_check "$rc_url" "$rc_url" "$domain" /tmp 10 "$workdir/chat-rc2" rc2-
section "autoscaling by connections, and a scale-in drained with 1012"
# Small numbers so a few CLI listeners move the fleet: 3 connections per
# gateway, between 1 and 2 gateways, a 5 s scale-down window.
gw_sel="app.kubernetes.io/instance=$RC,app.kubernetes.io/component=gateway"
kubectl -n "$CHAT_NS" patch "chatcluster/$RC" --type merge -p '{"spec":{"gateway":{
  "replicas":{"min":1,"max":2},
  "autoscaling":{"targetConnectionsPerReplica":3,"tolerancePercent":0,"scaleDownStabilizationSeconds":5}}}}'
# Gateway pods that are not being deleted, and their count.
live_gateways() {
  kubectl -n "$CHAT_NS" get pods -l "$gw_sel" \
    -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}{"\t"}{.metadata.name}{"\n"}{end}' |
    awk -F '\t' '$1 == "" { print $2 }'
}
# A gateway pod's open sockets (its metrics port, through the API server);
# 0 while it does not answer.
connections_of() {
  local n
  n=$(kubectl get --raw "/api/v1/namespaces/$CHAT_NS/pods/$1:9090/proxy/metrics" 2>/dev/null |
    awk '$1 == "switchboard_gateway_connections" && !seen { print $2 + 0; seen = 1 }') || true
  echo "${n:-0}"
}
# Waits (up to $2 s) until there are exactly $1 gateway pods, all ready.
wait_gateways() {
  local want=$1 i n ready
  for i in $(seq 1 "$2"); do
    n=$(live_gateways | wc -l)
    ready=$(kubectl -n "$CHAT_NS" get "deployment/$RC-gateway" -o jsonpath='{.status.readyReplicas}')
    [ "$n" = "$want" ] && [ "${ready:-0}" = "$want" ] && return 0
    sleep 1
  done
  kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.gateway}{"\n"}' >&2
  die "expected $want ready gateway pods within $2 s, have $n (ready ${ready:-0})"
}
# Idle: the operator scales in to 1 (after the window; each scale-in step
# waits 60 s after the previous one).
wait_gateways 1 120
echo "idle: 1 gateway ($(kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.gateway.lastScaleReason}'))"
listener_pids=()
listen_n() {
  local i
  for i in $(seq "$1" "$2"); do
    kubectl -n "$CHAT_NS" exec chat-client -- switchboard listen --key-file /tmp/rc-bob.key \
      --server "$rc_url" >"$workdir/scale-listen-$i.out" 2>"$workdir/scale-listen-$i.err" &
    listener_pids+=($!)
  done
}
stop_listeners() {
  local pid
  for pid in "${listener_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${listener_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  listener_pids=()
}
# Waits (up to 60 s) until the live gateways hold $1 connections in all.
wait_connections() {
  local i pod total
  for i in $(seq 1 60); do
    total=0
    for pod in $(live_gateways); do total=$((total + $(connections_of "$pod"))); done
    [ "$total" = "$1" ] && return 0
    sleep 1
  done
  die "the gateways hold $total connections, expected $1"
}
# 6 sockets on one gateway, target 3: a second one.
listen_n 1 6
wait_connections 6
wait_gateways 2 90
echo "scaled out: $(kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.gateway.lastScaleReason}')"
# 6 more, spread by the Service over both; then a target of 12 asks for one
# gateway: the least loaded goes, draining its sockets with 1012, and its
# clients reconnect to the other.
listen_n 7 12
wait_connections 12
declare -A held
for pod in $(live_gateways); do held[$pod]=$(connections_of "$pod"); done
echo "before scale-in: $(for p in "${!held[@]}"; do printf '%s=%s ' "$p" "${held[$p]}"; done)"
kubectl -n "$CHAT_NS" patch "chatcluster/$RC" --type merge \
  -p '{"spec":{"gateway":{"autoscaling":{"targetConnectionsPerReplica":12}}}}'
wait_gateways 1 120
survivor=$(live_gateways)
moved=0
for pod in "${!held[@]}"; do [ "$pod" = "$survivor" ] || moved=$((moved + held[$pod])); done
wait_connections 12
drained=$(cat "$workdir"/scale-listen-*.err | grep -c '^disconnected (1012)' || true)
[ "$drained" = "$moved" ] ||
  die "$moved sockets were on the removed gateway, $drained listeners saw 1012: $(cat "$workdir"/scale-listen-*.err)"
echo "scaled in: $(kubectl -n "$CHAT_NS" get "chatcluster/$RC" -o jsonpath='{.status.gateway.lastScaleReason}')"
echo "$moved sockets drained with 1012 and reconnected; $survivor holds all 12"
stop_listeners

kubectl -n "$CHAT_NS" delete pod chat-client --wait=false

printf '\ne2e suite passed in %ss\n' "$(($(date +%s) - start))"
