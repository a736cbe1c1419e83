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
