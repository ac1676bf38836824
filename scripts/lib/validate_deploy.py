"""Checks of deploy/ that no off-the-shelf tool makes; run by scripts/validate-deploy.

  python validate_deploy.py dashboard|alerts|kubernetes|docs   (from the repository root)

- dashboard: the Grafana JSON parses, panels are well formed, and every query (and template
  variable query) names only metrics listed in deploy/metrics.txt.
- alerts: every rule expression in deploy/prometheus/alerts.yaml names only listed metrics.
- kubernetes: references between the manifests resolve (ConfigMap, Secret, ServiceAccount,
  selectors, probe and Service ports), the ConfigMap's sandboxd.toml uses only known settings,
  and the pod refuses Kubernetes' service-link variables (sandboxd rejects unknown SANDBOXD_*).
- docs: README.md mentions every setting, environment variable and metric.

Needs PyYAML (the tools venv has it, through kubernetes-validate). Exits 1 with every finding.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path.cwd()
# Prometheus' own series, allowed besides sandboxd's.
PROMETHEUS_BUILTINS = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Top-level settings of sandboxd.toml (DESIGN.md's table plus engine_timeout and drain_timeout),
# with their environment variables. DOCKER_HOST is the engine's own convention.
def example_settings() -> dict[str, str]:
    """Every top-level setting of deploy/sandboxd.example.toml (commented ones too) with its
    environment variable, so a setting added to the server and its example cannot go undocumented."""
    settings = {}
    for line in (ROOT / "deploy/sandboxd.example.toml").read_text().splitlines():
        if line.startswith("["):
            break
        m = re.match(r"#?\s*([a-z_]+)\s*=", line)
        if m:
            key = m.group(1)
            settings[key] = "DOCKER_HOST" if key == "docker_host" else f"SANDBOXD_{key.upper()}"
    return settings


SETTINGS = example_settings()
AGENT_KEYS = {
    "image", "command", "port", "env", "user", "mount_target", "memory", "cpus", "pids_limit",
    "read_only_rootfs", "runtime", "cap_add", "ready_probe", "ready_timeout", "idle_timeout",
    "max_lifetime", "on_idle", "paused_retention", "max_sandboxes", "egress", "egress_allow",
}

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2", "start", "end",
}

errors: list[str] = []


def fail(message: str) -> None:
    errors.append(message)


def exported_metrics() -> set[str]:
    names = set()
    for line in (ROOT / "deploy/metrics.txt").read_text().splitlines():
        line = line.strip()
        if line:
            if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line):
                fail(f"deploy/metrics.txt: {line!r} is not a metric name")
            names.add(line)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana label_values() query) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    # Label lists of grouping modifiers: by (a, b), on(a), group_left(c)...
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    # Second argument of label_values(metric, label) is a label.
    text = re.sub(r"\blabel_values\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_]\w*\s*\)",
                  r" \1 ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        # durations and numbers like 5m or 1e3 start with a digit and never match; `offset 5m`'s
        # unit letters are glued to digits, also excluded by the lookbehind on \w.
        names.add(name)
    return names


def check_expr(where: str, expr: str, known: set[str]) -> None:
    names = metric_names(expr)
    if not names:
        fail(f"{where}: no metric in {expr!r}")
    for name in sorted(names):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in known:
                base = name[: -len(suffix)]
        if base not in known and name not in PROMETHEUS_BUILTINS:
            fail(f"{where}: {name!r} is not in deploy/metrics.txt (query {expr!r})")


def check_dashboard() -> None:
    known = exported_metrics()
    path = ROOT / "deploy/grafana/sandboxd.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON: {e}")
        return
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            fail(f"{path}: no {key!r}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            query = query.get("query") if isinstance(query, dict) else query
            check_expr(f"dashboard variable {var.get('name')}", query or "", known)
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # collapsed rows nest their panels
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        fail(f"{path}: duplicate panel ids")
    queries = 0
    for p in panels:
        where = f"dashboard panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title") or "gridPos" not in p:
            fail(f"{where}: needs a title and a gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            fail(f"{where}: no targets")
        for t in targets:
            expr = t.get("expr", "")
            queries += 1
            check_expr(where, expr, known)
            for ref in re.findall(r"\$\{?(\w+)", expr):
                if ref not in variables and not ref.startswith("__"):
                    fail(f"{where}: unknown variable ${ref}")
    print(f"dashboard: {len(panels)} panels, {queries} queries checked against deploy/metrics.txt")


def check_alerts() -> None:
    known = exported_metrics()
    path = ROOT / "deploy/prometheus/alerts.yaml"
    doc = yaml.safe_load(path.read_text())
    count = 0
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            check_expr(f"alert {name}", rule.get("expr", ""), known)
            annotations = rule.get("annotations", {})
            if rule.get("alert"):
                count += 1
                if not annotations.get("summary") or not annotations.get("runbook"):
                    fail(f"alert {name}: needs summary and runbook annotations")
                anchor = annotations.get("runbook", "").partition("#")[2]
                if anchor and anchor not in doc_anchors():
                    fail(f"alert {name}: runbook anchor #{anchor} is not a heading of README.md")
    print(f"alerts: {count} alerts checked (metrics, runbook anchors)")


def doc_anchors() -> set[str]:
    path = ROOT / "README.md"
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            # GitHub's slug: lowercase, drop punctuation but - and _, spaces to -.
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def load_manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def check_kubernetes() -> None:
    docs = load_manifests()
    by_kind: dict[str, dict[str, dict]] = {}
    for fname, doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        if kind != "Namespace" and meta.get("namespace") != "sandboxd":
            fail(f"{fname}: {kind}/{meta.get('name')} is not in namespace sandboxd")
        by_kind.setdefault(kind, {})[meta.get("name")] = doc
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet", "Service"):
        if not by_kind.get(kind):
            fail(f"deploy/kubernetes: no {kind}")

    workloads = list(by_kind.get("DaemonSet", {}).items()) + list(by_kind.get("Deployment", {}).items())
    pods = {}
    for name, w in workloads:
        pod = w["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        selector = w["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(f"{w['kind']}/{name}: selector {selector} does not match its pod labels {labels}")
        spec = pod["spec"]
        pods[name] = (labels, spec)
        if spec.get("enableServiceLinks") is not False:
            fail(f"{w['kind']}/{name}: enableServiceLinks must be false (sandboxd rejects unknown SANDBOXD_* variables)")
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            fail(f"{w['kind']}/{name}: no ServiceAccount {sa}")
        for vol in spec.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                fail(f"{w['kind']}/{name}: no ConfigMap {vol['configMap']['name']}")
            if "secret" in vol and vol["secret"]["secretName"] not in by_kind.get("Secret", {}):
                fail(f"{w['kind']}/{name}: no Secret {vol['secret']['secretName']}")
        volume_names = {v["name"] for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volume_names:
                    fail(f"{w['kind']}/{name}: mount of unknown volume {m['name']}")
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(probe_name)
                if not probe:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    port = probe.get(handler, {}).get("port")
                    if port is not None and port not in ports and port not in ports.values():
                        fail(f"{w['kind']}/{name}: {probe_name} port {port} is not a container port")
            for env in c.get("env", []):
                if env["name"].startswith("SANDBOXD_") and env["name"] not in SETTINGS.values() \
                        and env["name"] != "SANDBOXD_CONFIG":
                    fail(f"{w['kind']}/{name}: {env['name']} is not a sandboxd setting (sandboxd would refuse to start)")

    ds = by_kind.get("DaemonSet", {}).get("sandboxd")
    if ds:
        spec = ds["spec"]["template"]["spec"]
        c = spec["containers"][0]
        if c.get("readinessProbe", {}).get("grpc", {}).get("service") != "sandbox.v1.SandboxService":
            fail("DaemonSet/sandboxd: readiness must probe the gRPC health of sandbox.v1.SandboxService")
        # The egress rules need root with NET_ADMIN (and NET_RAW for the legacy backend), and
        # nothing else: see the comment on the choice in daemonset.yaml.
        if spec.get("securityContext", {}).get("runAsUser") != 0:
            fail("DaemonSet/sandboxd: runAsUser 0 expected (the egress rules need root)")
        caps = c.get("securityContext", {}).get("capabilities", {})
        if caps.get("drop") != ["ALL"] or sorted(caps.get("add", [])) != ["NET_ADMIN", "NET_RAW"]:
            fail("DaemonSet/sandboxd: capabilities must drop ALL and add back NET_ADMIN, NET_RAW only")
        annotations = ds["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            fail("DaemonSet/sandboxd: no prometheus.io/scrape annotation")

    for name, svc in by_kind.get("Service", {}).items():
        selector = svc["spec"].get("selector", {})
        matched = [pod for pod, (labels, _) in pods.items()
                   if all(labels.get(k) == v for k, v in selector.items())]
        if not matched:
            fail(f"Service/{name}: selector {selector} matches no workload")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for pod in matched:
                names = {p.get("name"): p["containerPort"]
                         for c in pods[pod][1]["containers"] for p in c.get("ports", [])}
                if target not in names and target not in names.values():
                    fail(f"Service/{name}: targetPort {target} is not a port of {pod}")

    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        selector = sm["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind.get("Service", {}).values()
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        if not services:
            fail(f"ServiceMonitor/{name}: selects no Service")
        for ep in sm["spec"].get("endpoints", []):
            if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                fail(f"ServiceMonitor/{name}: port {ep.get('port')} is not a named Service port")

    cm = by_kind.get("ConfigMap", {}).get("sandboxd-config")
    if cm:
        try:
            config = tomllib.loads(cm["data"]["sandboxd.toml"])
        except (KeyError, tomllib.TOMLDecodeError) as e:
            fail(f"ConfigMap/sandboxd-config: sandboxd.toml: {e}")
            config = {}
        for key, value in config.items():
            if key == "agents":
                for agent, profile in value.items():
                    for k in profile:
                        if k not in AGENT_KEYS:
                            fail(f"ConfigMap/sandboxd-config: agents.{agent}.{k} is not a profile key")
            elif key not in SETTINGS:
                fail(f"ConfigMap/sandboxd-config: {key} is not a sandboxd setting")
        token = config.get("auth_token_file", "")
        mounts = [m["mountPath"] for m in ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]] if ds else []
        if token and not any(token.startswith(m.rstrip("/") + "/") for m in mounts):
            fail(f"ConfigMap/sandboxd-config: auth_token_file {token} is not under a mounted volume")
        for root in config.get("allowed_volume_roots", []):
            if root not in mounts:
                fail(f"ConfigMap/sandboxd-config: volume root {root} is not mounted at the same path")
    print(f"kubernetes: {len(docs)} resources cross-checked, sandboxd.toml keys checked")


def check_docs() -> None:
    text = (ROOT / "README.md").read_text()
    for key, env in SETTINGS.items():
        for word in (key, env):
            if f"`{word}`" not in text:
                fail(f"README.md: setting `{word}` not documented")
    for key in AGENT_KEYS:
        if f"`{key}`" not in text:
            fail(f"README.md: agent profile key `{key}` not documented")
    for metric in exported_metrics():
        if f"`{metric}" not in text:
            fail(f"README.md: metric `{metric}` not documented")
    print("docs: settings, environment variables, profile keys and metrics checked")


def main() -> int:
    checks = {"dashboard": check_dashboard, "alerts": check_alerts,
              "kubernetes": check_kubernetes, "docs": check_docs}
    for name in sys.argv[1:] or list(checks):
        checks[name]()
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
