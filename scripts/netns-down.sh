#!/usr/bin/env bash
# Removes what scripts/netns-up.sh created: stops nfqdelay (by its pid file) and deletes
# both namespaces (which deletes the veth pair and every rule inside them).
# Safe to run any number of times. Uses the same KP_NETNS_* variables as netns-up.sh.
set -uo pipefail

REG=${KP_NETNS_REG:-kp-reg}
CLI=${KP_NETNS_CLI:-kp-cli}
STATE=${KP_NETNS_STATE:-/run/kube-prewarm-netns}

pidfile=$STATE/$CLI.nfqdelay.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && grep -q nfqdelay "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
fi

for ns in "$CLI" "$REG"; do
  if [ -e "/run/netns/$ns" ]; then
    # Processes still inside would keep the namespace alive after `ip netns del`: report them.
    left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -z "$left" ] || echo "warning: processes still in $ns: $left" >&2
    ip netns del "$ns"
  fi
done
exit 0
