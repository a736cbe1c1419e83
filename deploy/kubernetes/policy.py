"""The rules the Sluice manifests promise that no API schema checks, over one rendered
kustomization (a multi-document YAML file). Run by validate.sh with the venv's Python
(PyYAML comes with kubernetes-validate); prints each broken rule, exits 1 if any.

- every container (init containers too): CPU and memory requests and limits; no privilege
  escalation, a read-only root filesystem, all capabilities dropped; a non-root numeric uid;
- every Deployment or StatefulSet container: readiness and liveness probes;
- every Sluice server: gRPC probes on its listen port, readiness on its own service name and
  liveness on "" (overall); terminationGracePeriodSeconds above SLUICE_GRACE_PERIOD; a
  PodDisruptionBudget;
- the audit log: StatefulSet replicas = SLUICE_PARTITIONS = the gateway's SLUICE_LOGGING
  entries, entry K being pod K's stable name; risk and notification behind headless Services.
- the mesh token (the audit log's Append/Read guard): the gateway and logging each name a file
  in SLUICE_MESH_TOKEN_FILE that a volume mount fills from key `mesh-token` of Secret
  `sluice-mesh-token`, readable by the pod's group only (fsGroup), never a literal
  SLUICE_MESH_TOKEN; logging is not opened with SLUICE_ALLOW_OPEN_AUDIT_LOG; risk and
  notification do not get the token at all.
"""

import re
import sys

import yaml

# Binary -> the gRPC health service name its readiness reports (the code's NamedService::NAME).
SERVERS = {
    "sluice-gateway": "mesh.v1.Gateway",
    "sluice-risk": "mesh.v1.Risk",
    "sluice-notification": "mesh.v1.Notification",
    "sluice-logging": "mesh.v1.Logging",
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
# The mesh token: its Secret and key, who must hold it and who must not.
MESH_SECRET, MESH_KEY = "sluice-mesh-token", "mesh-token"
MESH_HOLDERS = ("sluice-gateway", "sluice-logging")
MESH_NEVER = ("sluice-risk", "sluice-notification")

problems = []


def problem(obj, text):
    problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {text}")


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration.strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


def binary(container):
    command = container.get("command") or []
    return command[0].rsplit("/", 1)[-1] if command else None


def env_of(container, configmaps):
    env = {}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        env.update(configmaps.get(ref, {}))
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value")
    return env


def secret_sources(volume):
    """(Secret name, its `items` or None for every key, default mode) of a secret or
    projected volume."""
    if "secret" in volume:
        sec = volume["secret"]
        yield sec.get("secretName"), sec.get("items"), sec.get("defaultMode", 0o644)
    projected = volume.get("projected") or {}
    for source in projected.get("sources") or []:
        if "secret" in source:
            sec = source["secret"]
            yield sec.get("name"), sec.get("items"), projected.get("defaultMode", 0o644)


def secret_file(pod, c, path):
    """(Secret name, key, mode) that fills file `path` in container `c`, or None when no
    secret volume mount of `c` provides that file."""
    mounts = sorted(c.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
    for m in mounts:
        mount = m["mountPath"].rstrip("/")
        if m.get("subPath"):
            if path != mount:
                continue
            rel = m["subPath"]
        elif path.startswith(mount + "/"):
            rel = path[len(mount) + 1 :]
        else:
            continue
        volume = next((v for v in pod.get("volumes") or [] if v["name"] == m["name"]), None)
        for name, items, mode in secret_sources(volume or {}):
            if items is None:
                if "/" not in rel:
                    return name, rel, mode
                continue
            for item in items:
                if item.get("path") == rel:
                    return name, item["key"], item.get("mode", mode)
        return None  # the deepest mount over `path` decides
    return None


def mounts_secret(pod, c, secret):
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return any(
        name == secret
        for m in c.get("volumeMounts") or []
        for name, _, _ in secret_sources(volumes.get(m["name"]) or {})
    )


def check_mesh_token(obj, pod, c, env):
    name = binary(c)
    if name in MESH_NEVER:
        given = "SLUICE_MESH_TOKEN" in env or "SLUICE_MESH_TOKEN_FILE" in env
        if given or mounts_secret(pod, c, MESH_SECRET):
            problem(obj, f"{name} gets the mesh token: only the gateway and logging hold it")
        return
    if name not in MESH_HOLDERS:
        return
    if "SLUICE_MESH_TOKEN" in env:
        problem(obj, "SLUICE_MESH_TOKEN is set: give the token as a file (SLUICE_MESH_TOKEN_FILE)")
    if name == "sluice-logging":
        if str(env.get("SLUICE_ALLOW_OPEN_AUDIT_LOG", "")).lower() in ("true", "1", "yes", "on"):
            problem(obj, "SLUICE_ALLOW_OPEN_AUDIT_LOG opens the audit log to anyone who reaches it")
    path = env.get("SLUICE_MESH_TOKEN_FILE")
    if not path:
        problem(obj, "no SLUICE_MESH_TOKEN_FILE: the audit log requires the mesh token")
        return
    found = secret_file(pod, c, str(path))
    if found is None or found[:2] != (MESH_SECRET, MESH_KEY):
        actual = f" (it is key {found[1]!r} of {found[0]!r})" if found else ""
        want = f"key {MESH_KEY!r} of Secret {MESH_SECRET!r}"
        problem(obj, f"SLUICE_MESH_TOKEN_FILE {path} is not {want}{actual}")
        return
    mode = found[2]
    if mode & 0o007:
        problem(obj, f"the mesh token file has mode {mode:o}: readable by others")
    elif not mode & 0o040 or (pod.get("securityContext") or {}).get("fsGroup") is None:
        # Secret files belong to root: the non-root user reads them through the pod's fsGroup.
        problem(obj, f"the mesh token file (mode {mode:o}) needs group read and the pod's fsGroup")


def check_container(obj, pod, c, long_running):
    where = f"container {c['name']}"
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                problem(obj, f"{where}: no {r} in resources.{kind}")
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(obj, f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(obj, f"{where}: readOnlyRootFilesystem is not true")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problem(obj, f"{where}: capabilities do not drop ALL")
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
        problem(obj, f"{where}: runAsNonRoot is not true")
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    if not isinstance(uid, int) or uid == 0:
        problem(obj, f"{where}: no numeric non-root runAsUser")
    if long_running:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problem(obj, f"{where}: no {probe}")


def check_server(obj, pod, c, env):
    name = binary(c)
    listen_port = int(str(env.get("SLUICE_LISTEN", ":0")).rsplit(":", 1)[-1])
    for probe, service in (("readinessProbe", SERVERS[name]), ("livenessProbe", "")):
        grpc = (c.get(probe) or {}).get("grpc")
        if grpc is None:
            problem(obj, f"{probe} is not a gRPC probe")
            continue
        if grpc.get("port") != listen_port:
            problem(obj, f"{probe} port {grpc.get('port')} is not SLUICE_LISTEN's {listen_port}")
        if grpc.get("service", "") != service:
            problem(obj, f"{probe} checks service {grpc.get('service')!r}, want {service!r}")
    grace = seconds(str(env.get("SLUICE_GRACE_PERIOD", "10s")))
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if grace is None or termination <= grace:
        problem(obj, f"terminationGracePeriodSeconds {termination} is not above SLUICE_GRACE_PERIOD")


def main(path):
    with open(path) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    configmaps = {
        o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"
    }
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    servers = {}  # binary -> (workload, env)
    checked = 0
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        checked += 1
        template = obj["spec"]["template"]
        pod = template["spec"]
        long_running = obj["kind"] != "Job"
        for c in pod.get("initContainers") or []:
            check_container(obj, pod, c, False)
        for c in pod["containers"]:
            check_container(obj, pod, c, long_running)
            if long_running and binary(c) in SERVERS:
                env = env_of(c, configmaps)
                servers[binary(c)] = (obj, env)
                check_server(obj, pod, c, env)
                check_mesh_token(obj, pod, c, env)
                labels = template["metadata"].get("labels") or {}
                if not any(
                    (p["spec"]["selector"].get("matchLabels") or {}).items() <= labels.items()
                    for p in pdbs
                ):
                    problem(obj, "no PodDisruptionBudget selects its pods")

    if "sluice-gateway" in servers:
        gateway, genv = servers["sluice-gateway"]
        for var in ("SLUICE_RISK", "SLUICE_NOTIFICATION"):
            for url in str(genv.get(var, "")).split(","):
                host = re.sub(r"^https?://", "", url).split(":")[0]
                svc = services.get(host)
                if svc is None or svc["spec"].get("clusterIP") != "None":
                    problem(gateway, f"{var} host {host!r} is not a headless Service here")
        if "sluice-logging" in servers:
            logging, lenv = servers["sluice-logging"]
            count = logging["spec"].get("replicas", 1)
            port = str(lenv.get("SLUICE_LISTEN", "")).rsplit(":", 1)[-1]
            name, svc = logging["metadata"]["name"], logging["spec"].get("serviceName")
            want = [f"http://{name}-{k}.{svc}:{port}" for k in range(count)]
            if str(lenv.get("SLUICE_PARTITIONS")) != str(count):
                problem(logging, f"SLUICE_PARTITIONS {lenv.get('SLUICE_PARTITIONS')} != replicas {count}")
            if lenv.get("SLUICE_PARTITION") != "auto":
                problem(logging, "SLUICE_PARTITION is not auto (the pod ordinal)")
            if str(genv.get("SLUICE_LOGGING", "")).split(",") != want:
                problem(gateway, f"SLUICE_LOGGING is not {','.join(want)}")
            if (services.get(svc) or {}).get("spec", {}).get("clusterIP") != "None":
                problem(logging, f"serviceName {svc!r} is not a headless Service here")

    for p in problems:
        print(f"POLICY {path}: {p}")
    print(f"policy: {checked} workloads, {len(servers)} Sluice servers checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
