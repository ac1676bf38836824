# shellcheck shell=bash
# A fleet of Docker engines on this one machine, each in its own network namespace with its own
# address, for end-to-end tests that need several nodes (docs/fleet-foundation.md).
# Sourced, not run. Root only.
#
#   source scripts/lib/fleet.sh
#   trap 'fleet_down x' EXIT
#   fleet_up x 3 >nodes.txt        # one line per node: "<i> <node address> <socket path>"
#   DOCKER_HOST=unix://$(fleet_node_socket x 2) docker ps
#
# Call fleet_up in the current shell, not in $(...): on failure it dies (exit 1), which runs the
# caller's EXIT trap, and fleet_down then removes whatever part was made. fleet_down reads all it
# needs from the machine (namespaces, links, pid files, mounts, cgroups), so it also works from
# another shell, after a partial fleet_up, and a second time.
#
# Node i of fleet NAME:
#   network namespace  NAME-n<i>                       (/run/netns/NAME-n<i>)
#   veth pair          NAMEh<i> (host, alias fleet:NAME) <-> NAMEn<i> (inside the namespace)
#   addresses          host side $FLEET_NET.<i>.1/24, node $FLEET_NET.<i>.2/24 (default route)
#   engine bridge      NAMEb<i> inside the namespace, $FLEET_BRIDGE_NET.<i>.1/24 (dockerd --bridge)
#   dockerd            nsenter --net=/run/netns/NAME-n<i> dockerd, socket /run/NAME/n<i>/docker.sock,
#                      exec root /run/NAME/n<i>/engine (its own supervised containerd lives there),
#                      data root /var/lib/NAME/n<i>, containers under cgroup /NAME-n<i>
#
# Host <-> node traffic is local delivery on the host, not forwarding: nothing is changed on the
# host's forwarding or packet filter by default. FLEET_CROSS_NODE=1 lets node reach node through
# the host (one FORWARD rule commented fleet:NAME, and ip_forward=1 if it was 0; both undone by
# fleet_down).

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FLEET_NET="${FLEET_NET:-10.213}"                 # node i: $FLEET_NET.i.0/24
# Node i's engine bridge: $FLEET_BRIDGE_NET.i.0/24. Not 172.17-31.x or 192.168.x: those are
# Docker's default address pools, which the main engine hands to new networks as tests make them
# (seen here: 172.30.0.0/16, 172.31.0.0/16, 192.168.32.0/20), so such a range may collide later.
FLEET_BRIDGE_NET="${FLEET_BRIDGE_NET:-10.214}"
FLEET_IMAGE="${FLEET_IMAGE:-${SANDBOX_IMAGE:-sandboxd/busybox:local}}"
FLEET_UP_TIMEOUT="${FLEET_UP_TIMEOUT:-60}"      # seconds for every engine to answer `docker info`
FLEET_STOP_TIMEOUT="${FLEET_STOP_TIMEOUT:-20}"  # seconds between SIGTERM and SIGKILL of a dockerd
# FLEET_LOG_DIR: when set, fleet_down copies each engine's log there as NAME-n<i>-dockerd.log.
FLEET_MAX_NODES=50
FLEET_ROUTE_PROTO=242  # tags the host's fallback routes (ip route ... proto 242) so fleet_down finds them
FLEET_ROUTE_METRIC=4242

fleet_node_socket() { printf '/run/%s/n%s/docker.sock\n' "$1" "$2"; }
fleet_node_addr() { printf '%s.%s.2\n' "$FLEET_NET" "$2"; }
# The host's own address on node i's link: what the node reaches the host (Redis, ...) at.
fleet_host_addr() { printf '%s.%s.1\n' "$FLEET_NET" "$2"; }

_fleet_check_name() {
  # NAME ends up in interface names (NAMEh<i> <= 15 chars) and in /run/NAME, /var/lib/NAME.
  [[ "${1:-}" =~ ^[a-z][a-z0-9]{0,9}$ ]] || die "fleet name '${1:-}' must match [a-z][a-z0-9]{0,9}"
  case "$1" in docker | containerd | netns | systemd | user | lock | apt | dpkg | dhcp)
    die "fleet name '$1' would share /run/$1 or /var/lib/$1 with the system" ;;
  esac
}

_fleet_ip2int() {
  local IFS=. a b c d
  read -r a b c d <<<"$1"
  printf '%s\n' $(((a << 24) | (b << 16) | (c << 8) | d))
}

_fleet_overlaps() {
  # _fleet_overlaps A/LEN B/LEN: true when the two networks share an address.
  local a=${1%/*} al=${1#*/} b=${2%/*} bl=${2#*/}
  [ "$al" = "$1" ] && al=32
  [ "$bl" = "$2" ] && bl=32
  local len=$((al < bl ? al : bl))
  local mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  [ "$len" -eq 0 ] && mask=0
  (( ($(_fleet_ip2int "$a") & mask) == ($(_fleet_ip2int "$b") & mask) ))
}

_fleet_host_networks() {
  # Every IPv4 network the host has an address in or a route to (default route excluded).
  ip -4 -o addr show | awk '{ print $4 }'
  ip -4 route show table all | awk '
    $1 ~ /^(unicast|local|broadcast|blackhole|unreachable|prohibit|throw|multicast|anycast|nat)$/ { $1 = $2 }
    $1 != "default" { print $1 }'
}

_fleet_must() {
  # Runs a step of fleet_up; dies naming it if it fails (also when the caller has no set -e).
  "$@" || die "fleet_up: failed: $*"
}

_fleet_alive() {
  # A pid that exists and is not a zombie.
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Starts node i's dockerd in its namespace (not waiting for it); see fleet_up.
_fleet_start_engine() {
  local name=$1 i=$2
  local ns=$name-n$i br=${name}b$i node_run=/run/$name/n$i node_lib=/var/lib/$name/n$i
  # nsenter, not `ip netns exec`: the latter also remounts /sys in a new mount namespace and
  # dockerd then fails with "Devices cgroup isn't mounted". setsid -f: not our child (no zombie
  # to wait for), its own session (survives this shell). The sh writes its pid and execs
  # through nohup and nsenter (which does not fork for --net) into dockerd, so launcher.pid is
  # the dockerd's pid from the start, before dockerd writes its own pid file.
  # shellcheck disable=SC2016
  setsid -f sh -c 'echo $$ >"$0"; exec "$@"' "$node_run/launcher.pid" \
    nohup nsenter --net="/run/netns/$ns" dockerd \
    --config-file "$node_run/daemon.json" \
    --data-root "$node_lib" \
    --exec-root "$node_run/engine" \
    --pidfile "$node_run/dockerd.pid" \
    -H "unix://$(fleet_node_socket "$name" "$i")" \
    --bridge "$br" \
    --cgroup-parent "/$ns" \
    --containerd-namespace "$ns" \
    --containerd-plugins-namespace "$ns-plugins" \
    >"$node_run/dockerd.log" 2>&1 </dev/null
}

# Waits until node i's engine answers (dies after $3, an absolute $SECONDS deadline).
_fleet_wait_engine() {
  local name=$1 i=$2 deadline=$3 run=/run/$1 sock pid
  sock=$(fleet_node_socket "$name" "$i")
  until [ -S "$sock" ] && timeout 5 docker -H "unix://$sock" info >/dev/null 2>&1; do
    pid=$(cat "$run/n$i/launcher.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && ! _fleet_alive "$pid"; then
      tail -n 30 "$run/n$i/dockerd.log" >&2 || true
      die "fleet_up $name: the engine of node $i exited (log above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$run/n$i/dockerd.log" >&2 || true
      die "fleet_up $name: the engine of node $i did not answer within ${FLEET_UP_TIMEOUT}s (log above)"
    fi
    sleep 0.2
  done
  pid=$(cat "$run/n$i/dockerd.pid")
  [ "$(ip netns identify "$pid")" = "$name-n$i" ] \
    || die "fleet_up $name: dockerd $pid of node $i is not in namespace $name-n$i"
}

# Stops node i's engine as a crash would for its sandboxes (SIGKILL to dockerd and its
# containerd: the containers die with them and stay, exited, in its data root). For node-loss tests.
fleet_engine_kill() {
  local name=$1 i=$2 pid
  pid=$(cat "/run/$name/n$i/dockerd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || die "fleet_engine_kill $name $i: no dockerd pid file"
  _fleet_node_pids "$name" "$i" | xargs -r kill -KILL 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
  while _fleet_alive "$pid"; do sleep 0.1; done
  rm -f "/run/$name/n$i/dockerd.pid" "$(fleet_node_socket "$name" "$i")"
}

# Starts node i's engine again after fleet_engine_kill, and waits for it.
fleet_engine_start() {
  local name=$1 i=$2
  _fleet_start_engine "$name" "$i"
  _fleet_wait_engine "$name" "$i" $((SECONDS + FLEET_UP_TIMEOUT))
}

fleet_up() {
  local name=${1:-} count=${2:-}
  _fleet_check_name "$name"
  if ! [[ "$count" =~ ^[0-9]+$ ]] || [ "$count" -lt 1 ] || [ "$count" -gt "$FLEET_MAX_NODES" ]; then
    die "fleet_up $name: count must be 1..$FLEET_MAX_NODES, got '$count'"
  fi
  [ "$(id -u)" = 0 ] || die "fleet_up needs root"
  local tool
  for tool in ip nsenter setsid dockerd docker; do
    command -v "$tool" >/dev/null 2>&1 || die "fleet_up: $tool is not on PATH"
  done
  docker image inspect "$FLEET_IMAGE" >/dev/null 2>&1 \
    || die "fleet_up: $FLEET_IMAGE is not in the main engine (scripts/lib/common.sh ensure_sandbox_image)"
  [ -S /run/containerd/containerd.sock ] \
    && log "warning: /run/containerd/containerd.sock exists: dockerd 20.10 then uses that containerd instead of its own (namespaces keep the engines apart)"

  local run=/run/$name lib=/var/lib/$name dir
  for dir in "$run" "$lib"; do
    if [ -e "$dir" ] && [ ! -e "$dir/.fleet" ]; then
      die "fleet_up $name: $dir exists and is not a fleet's directory"
    fi
  done

  # Refuse to stack on an existing fleet or to collide with anything the host has.
  local nets i net bridge_net ns
  nets=$(_fleet_host_networks)
  for i in $(seq 1 "$count"); do
    ns=$name-n$i
    [ -e "/run/netns/$ns" ] && die "fleet_up $name: namespace $ns exists (fleet_down $name first)"
    for dev in "${name}h$i" "${name}n$i" "${name}b$i"; do
      ip link show "$dev" >/dev/null 2>&1 && die "fleet_up $name: interface $dev exists on the host"
    done
    net=$FLEET_NET.$i.0/24
    bridge_net=$FLEET_BRIDGE_NET.$i.0/24
    while read -r other; do
      [ -n "$other" ] || continue
      _fleet_overlaps "$net" "$other" && die "fleet_up $name: $net collides with the host's $other"
      _fleet_overlaps "$bridge_net" "$other" && die "fleet_up $name: $bridge_net collides with the host's $other"
    done <<<"$nets"
  done

  mkdir -p "$run" "$lib"
  printf '%s\n' "$name" >"$run/.fleet"
  printf '%s\n' "$name" >"$lib/.fleet"

  printf '%s %s\n' "$FLEET_NET" "$FLEET_BRIDGE_NET" >"$run/.fleet-nets"
  # Nothing a node sends through the host leaves this machine: the host's FORWARD policy is the
  # main dockerd's (DROP here), but do not rely on it.
  iptables -w 5 -I FORWARD -i "${name}h+" ! -o "${name}h+" -m comment --comment "fleet:$name" -j DROP \
    || die "fleet_up $name: iptables -I FORWARD failed"
  if [ "${FLEET_CROSS_NODE:-0}" = 1 ]; then
    # Node-to-node traffic crosses the host's FORWARD chain, whose policy the main dockerd sets
    # to DROP: accept between this fleet's host-side links only.
    if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
      printf 'ip_forward 0\n' >>"$run/.fleet-changes"
      sysctl -qw net.ipv4.ip_forward=1
    fi
    iptables -w 5 -I FORWARD -i "${name}h+" -o "${name}h+" -m comment --comment "fleet:$name" -j ACCEPT \
      || die "fleet_up $name: iptables -I FORWARD failed"
  fi

  local image_tar=$run/image.tar
  docker save "$FLEET_IMAGE" -o "$image_tar" || die "fleet_up $name: docker save $FLEET_IMAGE failed"

  local host_ns node_ns
  host_ns=$(readlink /proc/self/ns/net)
  for i in $(seq 1 "$count"); do
    ns=$name-n$i
    local host_if=${name}h$i node_if=${name}n$i br=${name}b$i
    local node_run=$run/n$i node_lib=$lib/n$i
    mkdir -p "$node_run" "$node_lib"
    ip netns add "$ns" || die "fleet_up $name: ip netns add $ns failed"
    ip link add "$host_if" type veth peer name "$node_if" || die "fleet_up $name: ip link add $host_if failed"
    _fleet_must ip link set "$host_if" alias "fleet:$name"
    _fleet_must ip link set "$node_if" alias "fleet:$name"
    _fleet_must ip link set "$node_if" netns "$ns"
    _fleet_must ip addr add "$(fleet_host_addr "$name" "$i")/24" dev "$host_if"
    _fleet_must ip link set "$host_if" up
    _fleet_must ip -n "$ns" link set lo up
    _fleet_must ip -n "$ns" addr add "$(fleet_node_addr "$name" "$i")/24" dev "$node_if"
    _fleet_must ip -n "$ns" link set "$node_if" up
    _fleet_must ip -n "$ns" route add default via "$(fleet_host_addr "$name" "$i")"
    # While a node's link is down (a cut) the kernel drops its connected route, and the host would
    # send the node's addresses to its default gateway, off this machine. These fallback routes
    # (same prefixes, worse metric) make such traffic fail here with "No route to host" instead.
    _fleet_must ip route add unreachable "$FLEET_NET.$i.0/24" metric "$FLEET_ROUTE_METRIC" proto "$FLEET_ROUTE_PROTO"
    _fleet_must ip route add unreachable "$FLEET_BRIDGE_NET.$i.0/24" metric "$FLEET_ROUTE_METRIC" proto "$FLEET_ROUTE_PROTO"
    # The engine's bridge, made here inside the namespace so that dockerd (--bridge, not --bip)
    # never creates or readdresses a bridge itself: one started in the wrong namespace fails
    # instead of touching the host's docker0.
    _fleet_must ip -n "$ns" link add "$br" type bridge
    _fleet_must ip -n "$ns" link set "$br" alias "fleet:$name"
    _fleet_must ip -n "$ns" addr add "$FLEET_BRIDGE_NET.$i.1/24" dev "$br"
    _fleet_must ip -n "$ns" link set "$br" up

    node_ns=$(nsenter --net="/run/netns/$ns" readlink /proc/self/ns/net)
    if [ -z "$node_ns" ] || [ "$node_ns" = "$host_ns" ]; then
      die "fleet_up $name: nsenter into $ns failed"
    fi

    # Only the runtimes of the host's daemon.json (runsc, ...): its other keys are the main
    # engine's and may name its hosts, bridge or roots. Its own identity key: by default every
    # engine reads /etc/docker/key.json and `docker info` shows one ID for all of them.
    python3 - "${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}" "$node_lib/key.json" >"$node_run/daemon.json" <<'PY' \
      || die "fleet_up $name: could not write $node_run/daemon.json"
import json, sys
try:
    with open(sys.argv[1]) as f:
        runtimes = (json.load(f) or {}).get("runtimes", {})
except FileNotFoundError:
    runtimes = {}
config = {"deprecated-key-path": sys.argv[2]}
if runtimes:
    config["runtimes"] = runtimes
print(json.dumps(config))
PY

    _fleet_start_engine "$name" "$i"
  done

  # The engines start in parallel; wait for each.
  local deadline=$((SECONDS + FLEET_UP_TIMEOUT))
  for i in $(seq 1 "$count"); do
    _fleet_wait_engine "$name" "$i" "$deadline"
  done
  for i in $(seq 1 "$count"); do
    docker -H "unix://$(fleet_node_socket "$name" "$i")" load -q -i "$image_tar" >/dev/null \
      || die "fleet_up $name: loading $FLEET_IMAGE into node $i failed"
  done
  rm -f "$image_tar"
  for i in $(seq 1 "$count"); do
    printf '%s %s %s\n' "$i" "$(fleet_node_addr "$name" "$i")" "$(fleet_node_socket "$name" "$i")"
  done
}

_fleet_indices() {
  # Every node index of fleet $1 that left any trace on the machine.
  local name=$1
  {
    ip netns list 2>/dev/null | awk '{ print $1 }' | sed -n "s/^$name-n\([0-9]\+\)$/\1/p"
    ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed 's/@.*//' \
      | sed -n "s/^${name}[hbn]\([0-9]\+\)$/\1/p"
    find "/run/$name" "/var/lib/$name" -mindepth 1 -maxdepth 1 -name 'n*' -printf '%f\n' 2>/dev/null \
      | sed -n 's/^n\([0-9]\+\)$/\1/p'
    find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name "$name-n*" -printf '%f\n' 2>/dev/null \
      | sed -n "s/^$name-n\([0-9]\+\)$/\1/p"
    _fleet_engine_procs | grep -oE "(/run|/var/lib)/$name/n[0-9]+(/| |$)" | sed -n "s|.*/n\([0-9]\+\).*|\1|p"
  } | sort -un
}

_fleet_engine_procs() {
  # "pid command line" of every engine-side process (dockerd, containerd, shims, proxies, runc):
  # only these are matched by command line, never a shell that merely names a fleet path.
  ps -eo pid=,comm=,args= 2>/dev/null \
    | awk '$2 ~ /^(dockerd|containerd|containerd-shim.*|docker-proxy|runc)$/ { $2 = ""; print }'
}

_fleet_node_pids() {
  # Every process that belongs to node $2 of fleet $1: its engine, containerd, shims and proxies
  # (by command line), whatever runs in its namespace, and its containers (by cgroup).
  local name=$1 i=$2 ns=$1-n$2
  {
    _fleet_engine_procs | grep -E "(/run|/var/lib)/$name/n$i(/| |$)" | awk '{ print $1 }'
    [ -e "/run/netns/$ns" ] && ip netns pids "$ns" 2>/dev/null
    find /sys/fs/cgroup/*/"$ns" -name cgroup.procs -exec cat {} + 2>/dev/null
  } | sort -un | grep -vxE "$$|$BASHPID" || true
}

_fleet_mounts_under() {
  # Mount points at or under $1, deepest first.
  awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -ru
}

_fleet_unmount_under() {
  local m _
  for _ in 1 2 3 4 5; do
    m=$(_fleet_mounts_under "$1")
    [ -n "$m" ] || return 0
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$m"
  done
}

_fleet_down_node() {
  local name=$1 i=$2 ns=$1-n$2 run=/run/$1/n$2 lib=/var/lib/$1/n$2
  local sock pid pids deadline p d dev
  sock=$(fleet_node_socket "$name" "$i")
  if [ -S "$sock" ] && timeout 5 docker -H "unix://$sock" info >/dev/null 2>&1; then
    local ids
    ids=$(timeout 10 docker -H "unix://$sock" ps -aq 2>/dev/null)
    # shellcheck disable=SC2086
    [ -n "$ids" ] && timeout 60 docker -H "unix://$sock" rm -f $ids >/dev/null 2>&1
  fi
  pid=$(cat "$run/dockerd.pid" 2>/dev/null || cat "$run/launcher.pid" 2>/dev/null)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
    && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--exec-root $run/engine "; then
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + FLEET_STOP_TIMEOUT))
    while _fleet_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if _fleet_alive "$pid"; then
      log "fleet_down $name: dockerd $pid of node $i still runs after ${FLEET_STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  # Whatever is left (a dockerd without pid file, containerd, shims, proxies, container processes).
  for sig in TERM KILL; do
    pids=$(_fleet_node_pids "$name" "$i")
    [ -n "$pids" ] || break
    log "fleet_down $name: node $i: SIG$sig to leftover ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -"$sig" $pids 2>/dev/null
    deadline=$((SECONDS + 5))
    while [ "$SECONDS" -lt "$deadline" ]; do
      local alive=""
      for p in $pids; do _fleet_alive "$p" && alive=1; done
      [ -z "$alive" ] && break
      sleep 0.2
    done
  done
  _fleet_unmount_under "$run"
  _fleet_unmount_under "$lib"
  # Container cgroups under the node's cgroup parent, children first.
  find /sys/fs/cgroup/*/"$ns" -depth -type d -exec rmdir {} \; 2>/dev/null
  # Links on the host: only those this fleet labelled (the host-side veth; a node's veth end or
  # bridge only if one ever ended up on the host). Deleting one end removes the veth pair.
  for dev in "${name}h$i" "${name}n$i" "${name}b$i"; do
    if [ "$(cat "/sys/class/net/$dev/ifalias" 2>/dev/null)" = "fleet:$name" ]; then
      ip link del "$dev" 2>/dev/null
    elif [ -e "/sys/class/net/$dev" ]; then
      log "fleet_down $name: leaving host interface $dev alone (not labelled fleet:$name)"
    fi
  done
  [ -e "/run/netns/$ns" ] && ip netns del "$ns" 2>/dev/null
  local net bridge_net
  read -r net bridge_net 2>/dev/null <"/run/$name/.fleet-nets" || { net=$FLEET_NET; bridge_net=$FLEET_BRIDGE_NET; }
  for d in "$net.$i.0/24" "$bridge_net.$i.0/24"; do
    while ip route del unreachable "$d" proto "$FLEET_ROUTE_PROTO" 2>/dev/null; do :; done
  done
  return 0
}

fleet_down() {
  # Best effort and never fatal: runs in a subshell without set -e, so a caller's EXIT trap
  # always gets through it. Returns 1 if anything is left behind (and says what).
  _fleet_check_name "${1:-}"
  (
    set +e
    name=$1
    indices=$(_fleet_indices "$name" | tr '\n' ' ')
    have_state=""
    [ -e "/run/$name" ] || [ -e "/var/lib/$name" ] && have_state=1
    rules=$(iptables -w 5 -S 2>/dev/null | grep -F -- "--comment \"fleet:$name\"")
    read -r net bridge_net 2>/dev/null <"/run/$name/.fleet-nets" || { net=$FLEET_NET; bridge_net=$FLEET_BRIDGE_NET; }
    if [ -z "${indices// /}" ] && [ -z "$have_state" ] && [ -z "$rules" ]; then
      log "fleet_down $name: nothing to remove"
      exit 0
    fi
    started=$SECONDS
    # Nodes in parallel: each engine's shutdown takes a second or more.
    for i in $indices; do _fleet_down_node "$name" "$i" & done
    wait
    while read -r rule; do
      [ -n "$rule" ] || continue
      rule=${rule/-A /-D }
      # shellcheck disable=SC2086
      iptables -w 5 ${rule//\"/}
    done <<<"$rules"
    if grep -qx 'ip_forward 0' "/run/$name/.fleet-changes" 2>/dev/null; then
      sysctl -qw net.ipv4.ip_forward=0
    fi
    if [ -n "${FLEET_LOG_DIR:-}" ]; then
      # Keep the engines' logs (CI artifacts) before their directories go.
      mkdir -p "$FLEET_LOG_DIR"
      for log_file in "/run/$name"/n*/dockerd.log; do
        [ -f "$log_file" ] || continue
        d=${log_file%/dockerd.log}
        cp "$log_file" "$FLEET_LOG_DIR/$name-${d##*/}-dockerd.log"
      done
    fi
    for dir in "/run/$name" "/var/lib/$name"; do
      [ -e "$dir" ] || continue
      if [ -e "$dir/.fleet" ]; then
        _fleet_unmount_under "$dir"
        rm -rf --one-file-system "$dir"
      else
        log "fleet_down $name: leaving $dir alone (no .fleet marker)"
      fi
    done

    # What is left, if anything.
    left=""
    for i in $indices; do
      p=$(_fleet_node_pids "$name" "$i")
      [ -n "$p" ] && left="$left processes(n$i):${p//$'\n'/ }"
    done
    m=$(_fleet_mounts_under "/run/$name"; _fleet_mounts_under "/var/lib/$name")
    [ -n "$m" ] && left="$left mounts:${m//$'\n'/ }"
    n=$(ip netns list | awk '{ print $1 }' | grep -E "^$name-n[0-9]+$")
    [ -n "$n" ] && left="$left namespaces:${n//$'\n'/ }"
    l=$(_fleet_indices "$name" | tr '\n' ' ')
    [ -n "${l// /}" ] && left="$left traces-of-nodes:$l"
    r=$(for i in $indices; do ip route show proto "$FLEET_ROUTE_PROTO" | grep -E "^unreachable ($net|$bridge_net)\.$i\.0/24 "; done)
    [ -n "$r" ] && left="$left routes:${r//$'\n'/; }"
    r=$(iptables -w 5 -S 2>/dev/null | grep -F -- "--comment \"fleet:$name\"")
    [ -n "$r" ] && left="$left iptables:${r//$'\n'/; }"
    if [ -n "$left" ]; then
      log "fleet_down $name: LEFT BEHIND:$left"
      exit 1
    fi
    log "fleet_down $name: removed nodes ${indices% } in $((SECONDS - started))s"
  )
}
