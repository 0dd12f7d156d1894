# shellcheck shell=bash
# The chat check both end-to-end runs share: two wallets sign in with the
# `switchboard` CLI, one sends N numbered direct messages to the other, the
# caller disrupts the gateways half-way (deletes a gateway pod in kind,
# restarts a gateway process locally), and every message must reach the
# listener exactly once and in seq order, and every send must be answered.
#
# Sourced, not run. The caller defines:
#   sb ARGS...           runs the CLI (`switchboard ARGS...`) where the clients
#                        live: locally, or `kubectl exec` into a client pod
#   sb_bg OUT ARGS...    the same in the background, stdout to the local file
#                        OUT; sets SB_BG_PID to something `wait` can wait for
#   disrupt              what to do after half the messages
# and calls:
#   chat_check ALICE_SERVER BOB_SERVER DOMAIN KEY_DIR N WORKDIR [NAME_PREFIX]
# *_SERVER is the gateway URL each client uses (the same Service in kind, two
# gateways locally), KEY_DIR a directory for the key files as the clients see
# it (named NAME_PREFIX{alice,bob}.key: a fresh prefix is a fresh pair of
# wallets, whose conversation holds nothing yet), WORKDIR a local scratch
# directory.

# The address `switchboard login` prints ("logged in as 0x… until …").
chat_login() {
  local server=$1 domain=$2 key=$3 out
  out=$(sb login --server "$server" --domain "$domain" --key-file "$key") || return 1
  awk '$1 == "logged" && $2 == "in" && $3 == "as" { print $4; exit }' <<<"$out"
}

chat_check() {
  local alice_server=$1 bob_server=$2 domain=$3 keys=$4 n=$5 work=$6
  local alice_key="$keys/${7:-}alice.key" bob_key="$keys/${7:-}bob.key"
  local alice bob i out sent_log="$work/sent.log" got="$work/listen.out"
  alice=$(chat_login "$alice_server" "$domain" "$alice_key") || return 1
  bob=$(chat_login "$bob_server" "$domain" "$bob_key") || return 1
  [ -n "$alice" ] && [ -n "$bob" ] || {
    echo "chat check: sign-in printed no address" >&2
    return 1
  }
  echo "chat check: $alice ($alice_server) sends $n messages to $bob ($bob_server)"

  # Bob listens first; --conv replays the conversation's history, so
  # messages sent before his socket is up are not missed either.
  sb_bg "$got" listen --key-file "$bob_key" --server "$bob_server" --conv "$alice" --count "$n"
  local listener=$SB_BG_PID

  : >"$sent_log"
  for i in $(seq 1 "$n"); do
    # One CLI process per message: each signs the session in from its file,
    # opens a socket, sends with a fresh client id and waits for `sent`.
    if ! out=$(sb send --key-file "$alice_key" --server "$alice_server" --to "$bob" "m-$i"); then
      echo "chat check: send m-$i failed: $out" >&2
      return 1
    fi
    echo "$out" >>"$sent_log"
    if [ "$i" = $((n / 2)) ]; then
      disrupt
    fi
  done

  # The listener exits once it printed N messages; a lost message would keep
  # it waiting, so it gets a deadline (CHAT_CHECK_TIMEOUT seconds, 60).
  local deadline=$((SECONDS + ${CHAT_CHECK_TIMEOUT:-60}))
  while kill -0 "$listener" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$listener" 2>/dev/null; then
    kill "$listener" 2>/dev/null || true
    wait "$listener" 2>/dev/null || true
    echo "chat check: the listener did not get $n messages within ${CHAT_CHECK_TIMEOUT:-60} s" >&2
    chat_verify "$n" "$sent_log" "$got" || true
    return 1
  fi
  if ! wait "$listener"; then
    echo "chat check: the listener failed; it printed:" >&2
    cat "$got" >&2
    return 1
  fi
  chat_verify "$n" "$sent_log" "$got"
}

# Every send answered with a distinct seq; the listener printed m-1 … m-N
# exactly once each, with seqs strictly increasing.
chat_verify() {
  local n=$1 sent_log=$2 got=$3
  local sent_seqs
  sent_seqs=$(sed -n 's/^sent seq=\([0-9][0-9]*\) .*/\1/p' "$sent_log" | sort -n | uniq | wc -l)
  if [ "$sent_seqs" != "$n" ]; then
    echo "chat check: $n sends answered with $sent_seqs distinct seqs:" >&2
    cat "$sent_log" >&2
    return 1
  fi
  # Listener lines: "[conv] SEQ FROM: TEXT".
  awk -v n="$n" '
    /^\[/ {
      seq = $2; text = $NF
      if (seq + 0 <= last) { printf "seq %s after %s\n", seq, last; bad = 1 }
      last = seq + 0
      seen[text]++
    }
    END {
      for (i = 1; i <= n; i++) {
        c = seen["m-" i] + 0
        if (c != 1) { printf "m-%d received %d times\n", i, c; bad = 1 }
      }
      exit bad
    }' "$got" >&2 || {
    echo "chat check: the listener printed:" >&2
    cat "$got" >&2
    return 1
  }
  echo "chat check: $n messages sent, each received exactly once, in order"
}
