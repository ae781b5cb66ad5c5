#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: every file kustomization.yaml lists against the
# Kubernetes OpenAPI schemas shipped by kubernetes-validate (strict: unknown fields are errors),
# for the oldest and newest versions checked, then the cross-references a schema cannot see
# (selectors, names, ports, probes, security context). Needs the venv scripts/install-deps.sh --test
# makes. Usage: scripts/validate-k8s.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-deploy/kubernetes}
venv="${XDG_CACHE_HOME:-$HOME/.cache}/lurk/k8s-validate-venv"
PY=$venv/bin/python
[ -x "$PY" ] || { echo "validate-k8s: no $venv; run scripts/install-deps.sh --test" >&2; exit 1; }
mapfile -t files < <("$PY" - "$DIR" <<'PY'
import sys, yaml, os
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
assert k["kind"] == "Kustomization", "kustomization.yaml: not a Kustomization"
for r in k["resources"]:
    print(os.path.join(d, r))
PY
)
for v in 1.29.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}"
done
# The validator is live: a misspelt field must be refused.
bad=$(mktemp)
trap 'rm -f "$bad"' EXIT
sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$DIR/deployment.yaml" >"$bad"
if "$venv/bin/kubernetes-validate" --strict --quiet "$bad" >/dev/null 2>&1; then
  echo "validate-k8s: a misspelt field was accepted: the validator checks nothing" >&2
  exit 1
fi
"$PY" - "${files[@]}" <<'PY'
import sys, yaml
objs = {}
for f in sys.argv[1:]:
    for o in yaml.safe_load_all(open(f)):
        objs[o["kind"]] = o
dep, svc, pdb, cm = objs["Deployment"], objs["Service"], objs["PodDisruptionBudget"], objs["ConfigMap"]
pod = dep["spec"]["template"]
labels = pod["metadata"]["labels"]
def matches(sel):
    return all(labels.get(k) == v for k, v in sel.items())
errors = []
def check(ok, what):
    if not ok:
        errors.append(what)
check(dep["spec"]["replicas"] == 3, "Deployment: 3 replicas")
check(matches(dep["spec"]["selector"]["matchLabels"]), "Deployment selector matches its pods")
check(svc["spec"].get("clusterIP") == "None", "Service is headless")
check(matches(svc["spec"]["selector"]), "Service selector matches the pods")
check(matches(pdb["spec"]["selector"]["matchLabels"]), "PDB selector matches the pods")
spec = pod["spec"]
sc = spec["securityContext"]
check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "pod runs as non-root")
check(spec.get("automountServiceAccountToken") is False, "no service account token")
(cs,) = [c for c in spec["containers"] if c["name"] == "lurk-cs"]
for c in spec["containers"] + spec.get("initContainers", []):
    csc = c.get("securityContext", {})
    check(csc.get("readOnlyRootFilesystem") is True, c["name"] + ": read-only root filesystem")
    check(csc.get("allowPrivilegeEscalation") is False, c["name"] + ": no privilege escalation")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], c["name"] + ": drops all capabilities")
    r = c.get("resources", {})
    check("cpu" in r.get("requests", {}) and "memory" in r.get("requests", {}), c["name"] + ": requests")
    check("memory" in r.get("limits", {}), c["name"] + ": memory limit")
ports = {p["name"]: p["containerPort"] for p in cs["ports"]}
for p in svc["spec"]["ports"]:
    check(p["targetPort"] in ports, "Service targetPort %s is a container port" % p["targetPort"])
volumes = {v["name"]: v for v in spec["volumes"]}
for c in spec["containers"] + spec.get("initContainers", []):
    for m in c.get("volumeMounts", []):
        check(m["name"] in volumes, c["name"] + ": volume " + m["name"] + " exists")
check(volumes["config"]["configMap"]["name"] == cm["metadata"]["name"], "config volume is the ConfigMap")
check("lurk-cs.toml" in cm["data"], "ConfigMap holds lurk-cs.toml")
conf = "/etc/lurk/config/lurk-cs.toml"
check(cs["args"][-1] == conf and any(m["mountPath"] == "/etc/lurk/config" for m in cs["volumeMounts"]), "serve --config " + conf)
mounts = [m["mountPath"] for m in cs["volumeMounts"]]
toml = cm["data"]["lurk-cs.toml"]
for line in toml.splitlines():
    line = line.strip()
    if line.startswith("#") or "=" not in line:
        continue
    val = line.split("=", 1)[1].strip().strip('"')
    if val.startswith("/etc/lurk/") or val.startswith("/var/lib/softhsm"):
        check(any(val.startswith(m + "/") for m in mounts), "config path %s is mounted" % val)
for probe in ("readinessProbe", "livenessProbe"):
    cmd = cs[probe]["exec"]["command"]
    check(cmd[:2] == ["/usr/local/bin/lurk-cs", "health"], probe + ": lurk-cs health")
    for a in cmd[2:]:
        if a.startswith(("--ca=", "--cert=", "--key=")):
            path = a.split("=", 1)[1]
            check(any(path.startswith(m + "/") for m in mounts), probe + ": %s is mounted" % path)
check("--any-status" in cs["livenessProbe"]["exec"]["command"], "liveness does not restart on NOT_SERVING")
check("--any-status" not in cs["readinessProbe"]["exec"]["command"], "readiness needs SERVING")
if errors:
    sys.exit("validate-k8s: " + "; ".join(errors))
print("validate-k8s: %d files valid, cross-references hold" % len(sys.argv[1:]))
PY
