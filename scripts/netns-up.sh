#!/usr/bin/env bash
# Creates (or reconfigures) two network namespaces joined by a shaped veth pair, for
# benchmarks that need a WAN-like link on a kernel without netem or fq:
#
#   $KP_NETNS_REG (default kp-reg)  10.213.0.1/30  --veth--  10.213.0.2/30  $KP_NETNS_CLI (default kp-cli)
#
# Usage: scripts/netns-up.sh <profile>     profile: P1 | P2 | none
#   P1    1 Gbit tbf each way, +50 ms RTT, client receive window capped at 256 KiB per
#         connection (one connection gets ~1/10 of the link: a per-connection-capped registry)
#   P2    200 Mbit tbf each way, +50 ms RTT, no window cap (the link is the bottleneck)
#   none  unshaped veth (no tbf, no delay, no window cap)
#
# Idempotent: running it again with another profile reshapes the existing namespaces.
# How the shaping works (see ../../shared TESTBED "Network shaping"):
#   - bandwidth: tbf on the egress of both veth ends;
#   - latency: an NFQUEUE rule on the client's INPUT for packets from the registry, served
#     by nfqdelay (bench/tools/nfqdelay.c, built into $KP_TESTBIN) which holds each packet
#     for the delay and then accepts it. `ping` does not see it (ICMP is not queued
#     differently, but measure RTT with a TCP connect anyway);
#   - per-connection window: `window` on the client's route to the subnet clamps the
#     receive window the client advertises.
# Addresses exist only inside the two namespaces: nothing is routed to or from the host.
# Undo with scripts/netns-down.sh. Prints `reg=<ns> cli=<ns> reg_ip=<ip> cli_ip=<ip>`.
set -euo pipefail

PROFILE=${1:-}
REG=${KP_NETNS_REG:-kp-reg}
CLI=${KP_NETNS_CLI:-kp-cli}
NET=10.213.0
REG_IP=$NET.1
CLI_IP=$NET.2
VREG=kpv-${REG#kp-}
VCLI=kpv-${CLI#kp-}
DELAY_MS=${KP_NETNS_DELAY_MS:-50}
BIN=${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}
STATE=${KP_NETNS_STATE:-/run/kube-prewarm-netns}
HERE=$(cd "$(dirname "$0")" && pwd)
NFQ_SRC=$HERE/../bench/tools/nfqdelay.c

case "$PROFILE" in
  P1) RATE=1gbit BURST=256kb WINDOW=262144 ;;
  P2) RATE=200mbit BURST=128kb WINDOW= ;;
  none) RATE= BURST= WINDOW= ;;
  *) echo "usage: $0 P1|P2|none" >&2; exit 2 ;;
esac
# veth names are limited to 15 characters.
if [ ${#VREG} -gt 15 ] || [ ${#VCLI} -gt 15 ]; then
  echo "namespace names too long for veth names: $VREG $VCLI" >&2; exit 2
fi

# A failure half-way leaves nothing behind: the next run starts from a clean slate.
ok=0
cleanup_on_failure() { [ "$ok" = 1 ] || "$HERE/netns-down.sh" >/dev/null 2>&1 || true; }
trap cleanup_on_failure EXIT

# nfqdelay: build once into the tool cache, rebuild when the source changes.
build_nfqdelay() {
  mkdir -p "$BIN"
  local sum; sum=$(sha256sum "$NFQ_SRC" | cut -c1-16)
  if [ ! -x "$BIN/nfqdelay" ] || [ "$(cat "$BIN/.nfqdelay.version" 2>/dev/null)" != "$sum" ]; then
    gcc -O2 -Wall -o "$BIN/nfqdelay.tmp" "$NFQ_SRC" -lnetfilter_queue -lnfnetlink
    mv "$BIN/nfqdelay.tmp" "$BIN/nfqdelay"
    echo "$sum" >"$BIN/.nfqdelay.version"
  fi
}

nsx() { ip netns exec "$@"; }

ensure_topology() {
  for ns in "$REG" "$CLI"; do
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    nsx "$ns" ip link set lo up
  done
  if ! ip -n "$REG" link show "$VREG" >/dev/null 2>&1; then
    # Create both ends in the root namespace under unique names, then move them at once.
    ip link add "$VREG" type veth peer name "$VCLI"
    ip link set "$VREG" netns "$REG"
    ip link set "$VCLI" netns "$CLI"
  fi
  ip -n "$REG" addr replace "$REG_IP/30" dev "$VREG"
  ip -n "$CLI" addr replace "$CLI_IP/30" dev "$VCLI"
  ip -n "$REG" link set "$VREG" up
  ip -n "$CLI" link set "$VCLI" up
}

stop_nfqdelay() {
  local pidfile=$STATE/$CLI.nfqdelay.pid
  if [ -f "$pidfile" ]; then
    local pid; pid=$(cat "$pidfile")
    # Only kill it if the pid still is our nfqdelay (pids get reused).
    if [ -n "$pid" ] && grep -q nfqdelay "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  fi
}

shape() {
  for pair in "$REG:$VREG" "$CLI:$VCLI"; do
    local ns=${pair%%:*} dev=${pair#*:}
    if [ -n "$RATE" ]; then
      # latency bounds the queue (limit = rate*latency + burst), like a router buffer.
      ip -n "$ns" link set "$dev" txqueuelen 1000
      nsx "$ns" tc qdisc replace dev "$dev" root tbf rate "$RATE" burst "$BURST" latency 25ms
    else
      nsx "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
    fi
  done

  # Delay: flush our rule, restart nfqdelay, add the rule back (without --queue-bypass:
  # if nfqdelay dies, traffic stops instead of silently losing the latency).
  nsx "$CLI" iptables-legacy -F INPUT
  stop_nfqdelay
  if [ -n "$RATE" ]; then
    mkdir -p "$STATE"
    # Started directly (not through a shell function) so that $! is nfqdelay itself:
    # `ip netns exec` execs its command.
    ip netns exec "$CLI" "$BIN/nfqdelay" 0 "$DELAY_MS" </dev/null >>"$STATE/$CLI.nfqdelay.log" 2>&1 &
    echo $! >"$STATE/$CLI.nfqdelay.pid"
    sleep 0.2
    kill -0 "$(cat "$STATE/$CLI.nfqdelay.pid")" || { echo "nfqdelay failed to start" >&2; exit 1; }
    nsx "$CLI" iptables-legacy -A INPUT -s "$REG_IP" -j NFQUEUE --queue-num 0
  fi

  # Window cap on the client's route to the registry (the kernel route is replaced in place).
  if [ -n "$WINDOW" ]; then
    ip -n "$CLI" route replace "$NET.0/30" dev "$VCLI" proto kernel scope link src "$CLI_IP" window "$WINDOW"
  else
    ip -n "$CLI" route replace "$NET.0/30" dev "$VCLI" proto kernel scope link src "$CLI_IP"
  fi
}

[ "$PROFILE" = none ] || build_nfqdelay
ensure_topology
shape
ok=1
echo "reg=$REG cli=$CLI reg_ip=$REG_IP cli_ip=$CLI_IP profile=$PROFILE"
