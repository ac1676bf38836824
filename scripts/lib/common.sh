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

ensure_docker() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  local sock=/var/run/docker.sock
  if [ -S "$sock" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    return 0
  fi
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/sandboxd-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    if [ -S "$sock" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 /var/log/sandboxd-dockerd.log >&2 || true
  die "dockerd did not come up within 60s"
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
