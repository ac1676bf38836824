# Shared helpers for scripts/*: idempotent installs and service starts on a fresh Debian machine.
# Sourced, not run.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=""
apt_install() {
  # Installs the Debian packages that are missing; `apt-get update` at most once per run.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

ensure_redis_installed() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  # The failover tests run Debian's sentinel next to their servers.
  command -v redis-sentinel >/dev/null 2>&1 || apt_install redis-sentinel
  # Debian's package starts a service on 6379 under systemd; on machines without systemd nothing
  # runs, which is what the tests want (they start their own servers on free ports).
}

# The engine configuration ensure_runsc merges its runtime into and ensure_docker starts dockerd with.
DOCKER_DAEMON_JSON="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"

ensure_docker() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  local sock=/var/run/docker.sock
  if [ -S "$sock" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    return 0
  fi
  log "starting dockerd"
  mkdir -p /var/log
  # The engine's daemon.json holds the runtimes ensure_runsc registers; name it explicitly so a
  # started engine has them whichever file ensure_runsc wrote.
  local config=()
  [ -f "$DOCKER_DAEMON_JSON" ] && config=(--config-file "$DOCKER_DAEMON_JSON")
  setsid nohup dockerd "${config[@]}" >/var/log/sandboxd-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if [ -S "$sock" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 /var/log/sandboxd-dockerd.log >&2 || true
  die "dockerd did not come up within 60s"
}

ensure_runsc() {
  # gVisor for agent profiles with `runtime = "runsc"`: Debian's runsc package, registered with
  # the engine as the runtime `runsc`. Debian's runsc (release 2022-12-19) refuses to start any
  # container on this 6.x kernel with its own network stack ("cannot run with network enabled in
  # root network namespace"); with `--network=host` it runs, using the host kernel's network stack
  # inside the container's own network namespace (README, "Isolation"). Idempotent: a second run
  # changes nothing and reloads nothing.
  command -v runsc >/dev/null 2>&1 || apt_install runsc
  local runsc_path
  runsc_path=$(command -v runsc) || die "runsc is not on PATH after installing it"
  local changed
  changed=$(merge_docker_runtime runsc "$runsc_path" --network=host) \
    || die "could not register runsc in $DOCKER_DAEMON_JSON"
  # A running engine reads the file again on SIGHUP; one started later (ensure_docker) reads it
  # at start. Reload also when the file was already right but the engine never loaded it.
  if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    if [ "$changed" = changed ] || ! docker_lists_runtime runsc; then
      reload_dockerd
    fi
  fi
  ensure_docker
  for _ in $(seq 1 40); do
    docker_lists_runtime runsc && return 0
    sleep 0.25
  done
  tail -n 20 /var/log/sandboxd-dockerd.log >&2 2>/dev/null || true
  die "the engine does not list the runtime runsc after a reload (docker info --format '{{json .Runtimes}}')"
}

merge_docker_runtime() {
  # merge_docker_runtime NAME PATH [ARG...]: sets runtimes.NAME in the engine's daemon.json to
  # {"path": PATH, "runtimeArgs": [ARG...]}, keeping every other key; prints `changed` or
  # `unchanged`. Refuses (non-zero) a file that is not a JSON object rather than overwrite it.
  mkdir -p "$(dirname "$DOCKER_DAEMON_JSON")"
  python3 - "$DOCKER_DAEMON_JSON" "$@" <<'PY'
import json, os, sys
path, name, binary, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
config = json.loads(text) if text.strip() else {}
if not isinstance(config, dict) or not isinstance(config.get("runtimes", {}), dict):
    sys.exit(f"{path}: not a JSON object with a runtimes object")
wanted = {"path": binary}
if args:
    wanted["runtimeArgs"] = args
if config.get("runtimes", {}).get(name) == wanted:
    print("unchanged")
    sys.exit(0)
config.setdefault("runtimes", {})[name] = wanted
tmp = path + ".sandboxd-tmp"
with open(tmp, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
print("changed")
PY
}

docker_lists_runtime() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null \
    | python3 -c 'import json, sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin) else 1)' "$1"
}

reload_dockerd() {
  # SIGHUP makes dockerd re-read daemon.json (runtimes are reloadable) without stopping a
  # container; the default engine's pid file names it, so engines of other tests are left alone.
  local pid=""
  [ -r /var/run/docker.pid ] && pid=$(cat /var/run/docker.pid)
  if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
    pid=$(pgrep -x dockerd || true)
    [ "$(printf '%s\n' "$pid" | grep -c .)" -eq 1 ] || die "cannot tell which dockerd to reload (pids: ${pid:-none})"
  fi
  log "reloading dockerd ($pid) to register runsc"
  kill -HUP "$pid" || die "kill -HUP $pid failed"
}

restart_docker() {
  # Stops the default engine (its pid file names it, so other tests' engines are left alone) and
  # starts it again: the only way to clear an engine's stale network state.
  local pid=""
  [ -r /var/run/docker.pid ] && pid=$(cat /var/run/docker.pid)
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || die "no default dockerd to restart"
  kill "$pid"
  for _ in $(seq 1 60); do
    [ -d "/proc/$pid" ] || break
    sleep 0.5
  done
  [ -d "/proc/$pid" ] && die "dockerd ($pid) did not stop within 30s"
  ensure_docker
}

SANDBOX_IMAGE="${SANDBOX_IMAGE:-sandboxd/busybox:local}"

ensure_sandbox_image() {
  # The sandbox image is built locally from Debian's static busybox: no registry is reachable.
  [ -x /bin/busybox ] && file_is_static /bin/busybox || apt_install busybox-static
  if docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  log "building $SANDBOX_IMAGE"
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp /bin/busybox "$ctx/busybox"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
WORKDIR /workspace
EXPOSE 8080
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/workspace"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "$SANDBOX_IMAGE" "$ctx" >/dev/null || die "building $SANDBOX_IMAGE failed"
}

# The warm pool's waiter (crates/pool-waiter): bind-mounted into pooled sandboxes, whose images
# may be FROM scratch, so it must be a static executable (sandboxd refuses a dynamic one). Built
# with `+crt-static` for the host's target, which must be x86_64-unknown-linux-gnu; the test kit
# (crates/testkit/src/pool.rs) builds the same binary the same way.
POOL_WAITER_TARGET=x86_64-unknown-linux-gnu

pool_waiter_target_dir() {
  # The cargo target directory, absolute: CARGO_TARGET_DIR (relative to the working directory,
  # as cargo reads it) if set, else the repository's target/.
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  case "${CARGO_TARGET_DIR:-}" in
    "") printf '%s\n' "$root/target" ;;
    /*) printf '%s\n' "$CARGO_TARGET_DIR" ;;
    *) printf '%s\n' "$PWD/$CARGO_TARGET_DIR" ;;
  esac
}

build_pool_waiter() {
  # Builds the static waiter (incremental: quick when nothing changed); prints nothing on stdout.
  local root host target_dir
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  command -v rustc >/dev/null 2>&1 || die "rustc is not on PATH: install the Rust toolchain (rust-toolchain.toml)"
  host=$(cd "$root" && rustc -vV | sed -n 's/^host: //p')
  [ "$host" = "$POOL_WAITER_TARGET" ] \
    || die "the pool waiter is built for $POOL_WAITER_TARGET, but this host's Rust target is '${host:-unknown}'"
  target_dir=$(pool_waiter_target_dir)
  log "building the static pool waiter (sandboxd-pool-waiter, +crt-static, $POOL_WAITER_TARGET)"
  (cd "$root" && CARGO_TARGET_DIR="$target_dir" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p sandboxd-pool-waiter --target "$POOL_WAITER_TARGET" >&2) \
    || die "building the pool waiter failed"
  [ -x "$target_dir/$POOL_WAITER_TARGET/release/pool-waiter" ] \
    || die "cargo did not produce $target_dir/$POOL_WAITER_TARGET/release/pool-waiter"
}

pool_waiter_path() {
  # The absolute path of the waiter build_pool_waiter builds (sandboxd's pool_waiter setting).
  local path
  path="$(pool_waiter_target_dir)/$POOL_WAITER_TARGET/release/pool-waiter"
  [ -x "$path" ] || die "$path is not built: run build_pool_waiter (scripts/lib/common.sh)"
  printf '%s\n' "$path"
}

file_is_static() {
  # busybox-static replaces /bin/busybox with a static build; the dynamic one cannot run FROM scratch.
  ! ldd "$1" >/dev/null 2>&1
}

ensure_metrics_tools() {
  # The observability tests parse /metrics with the official Python client's parser (system
  # interpreter) and lint it with promtool.
  /usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 || apt_install python3 python3-prometheus-client
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
}

# Removes what a sandboxd with key_prefix $1 installed for its egress policies: the packet-filter
# jumps and chains (each jump and each chain's first rule carries the comment sandboxd:$1) and,
# once no container uses them, its bridge networks (labelled $1.managed-by). For scripts that run
# a sandboxd of their own; sandboxd itself never removes them (its sandboxes depend on them).
remove_egress() {
  local prefix=$1 line chain chains=""
  while IFS= read -r line; do
    chain=$(awk '{ print $2 }' <<<"$line")
    case "$chain" in
      SBX-*) chains="$chains $chain" ;;
      *)
        # `-A CHAIN spec` -> `-D CHAIN spec`; the comment holds no spaces, so unquoted words do.
        line=${line/-A /-D }
        # shellcheck disable=SC2086
        iptables -w 5 ${line//\"/} || true
        chains="$chains ${line##* -j }"
        ;;
    esac
  done < <(iptables -w 5 -S 2>/dev/null | grep -F -- "--comment \"sandboxd:$prefix\"" || true)
  for chain in $(tr ' ' '\n' <<<"$chains" | sort -u); do
    iptables -w 5 -F "$chain" 2>/dev/null || true
    iptables -w 5 -X "$chain" 2>/dev/null || true
  done
  docker network ls -q --filter "label=$prefix.managed-by" | xargs -r docker network rm >/dev/null 2>&1 || true
}
