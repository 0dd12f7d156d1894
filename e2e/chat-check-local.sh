#!/usr/bin/env bash
# The kind e2e's chat check (e2e/chat-check.sh) on this machine, without
# Kubernetes: a redis-server and two gateways (`switchboard dev` on Redis,
# one token secret), Alice on the first, Bob on the second. Half-way, Bob's
# gateway is stopped with SIGTERM (it drains: 1012 to its sockets, as a
# deleted pod does) and started again on the same port; Bob's listener must
# reconnect and resume, and no message may be lost or doubled.
#
#   e2e/chat-check-local.sh [BIN_DIR]     (default target/debug)
#
# Needs redis-server and python3 (for free ports); scripts/test runs it after
# the cargo build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/debug}"
[ -x "$BIN/switchboard" ] || {
  echo "chat-check-local.sh: no $BIN/switchboard (cargo build --bin switchboard)" >&2
  exit 1
}
# shellcheck source=e2e/chat-check.sh
. "$ROOT/e2e/chat-check.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-chat-check.XXXXXX")
pids=()
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for f in "$work"/*.log; do
      printf '\n---- %s\n' "$f" >&2
      tail -n 40 "$f" >&2
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until GET /readyz answers "ready" (the gateway is up and has Redis).
wait_ready() {
  local url=$1 i
  for i in $(seq 1 100); do
    [ "$(curl -fsS --max-time 1 "$url/readyz" 2>/dev/null || true)" = ready ] && return 0
    sleep 0.1
  done
  echo "chat-check-local.sh: $url never answered ready" >&2
  return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done

port_a=$(free_port)
port_b=$(free_port)
gateway_b_pid=""
start_gateway() { # NAME PORT
  "$BIN/switchboard" dev --listen "127.0.0.1:$2" --redis-url "redis://127.0.0.1:$redis_port" \
    --token-secret-file "$work/token-secret" --drain-seconds 2 >>"$work/gateway-$1.log" 2>&1 &
  pids+=($!)
  [ "$1" = b ] && gateway_b_pid=$!
  wait_ready "http://127.0.0.1:$2"
}
start_gateway a "$port_a"
start_gateway b "$port_b"

sb() { "$BIN/switchboard" "$@"; }
sb_bg() {
  local out=$1
  shift
  "$BIN/switchboard" "$@" >"$out" 2>"$work/listen.log" &
  SB_BG_PID=$!
}
disrupt() {
  echo "chat check: SIGTERM to Bob's gateway (drain), then start it again"
  kill -TERM "$gateway_b_pid"
  wait "$gateway_b_pid" || true
  start_gateway b "$port_b"
}

chat_check "http://127.0.0.1:$port_a" "http://127.0.0.1:$port_b" localhost "$work" "${CHAT_CHECK_MESSAGES:-20}" "$work"
# A wait on the old gateway B's pid in cleanup is harmless (already reaped).
