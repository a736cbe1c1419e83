#!/usr/bin/env bash
# Offline check of the Kubernetes manifests, for CI and before a commit; no cluster needed.
#
# Renders every kustomization under deploy/kubernetes with `kubectl kustomize` (the base, each
# overlay, and the base with each component on its own), then checks every rendered object:
#   - against the Kubernetes API schemas with kubernetes-validate, strictly: an unknown field,
#     a wrong type or a kind without a schema fails;
#   - against policy.py: the rules the manifests promise that no schema checks (resources,
#     locked-down containers, probes, grace periods, PDBs, audit-log partitions, and the mesh
#     token: the gateway and logging read it from Secret sluice-mesh-token through
#     SLUICE_MESH_TOKEN_FILE, risk and notification never get it).
# A kustomize warning fails too. Every problem is printed; the exit code is 1 if any.
#
# Needs kubectl and python3. The first run installs kubernetes-validate (pinned) from PyPI
# into a venv under ~/.cache/sluice (SLUICE_CACHE_DIR to move it) and, only where
# `python3 -m venv` is missing and it runs as root with apt-get, Debian's python3-venv.
# Nothing else is installed.
#
#   deploy/kubernetes/validate.sh
#   SLUICE_K8S_VERSIONS="1.30 1.33" deploy/kubernetes/validate.sh   # default: 1.31 and the newest
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kv_version=1.37.0
cache=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sluice}
venv=$cache/kubernetes-validate-$kv_version

die() {
  echo "validate.sh: $*" >&2
  exit 1
}

command -v kubectl >/dev/null || die "kubectl not found (its built-in kustomize renders the manifests)"
command -v python3 >/dev/null || die "python3 not found (kubernetes-validate is a Python package)"

# --- kubernetes-validate, in its own venv --------------------------------------------------
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$kv_version" ]; then
  echo "installing kubernetes-validate==$kv_version into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 -m venv does not work here: installing Debian's python3-venv"
      apt-get install -y -q python3-venv >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; } ||
        echo "apt-get could not install python3-venv" >&2
    fi
    python3 -m venv "$venv" ||
      { rm -rf "$venv"; die "cannot create a Python venv: install python3-venv, then run again"; }
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$kv_version" ||
    { rm -rf "$venv"; die "pip could not install kubernetes-validate==$kv_version (is PyPI reachable?); nothing was validated"; }
  echo "$kv_version" >"$venv/.installed"
fi
kv=$venv/bin/kubernetes-validate
newest=$("$venv/bin/python" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')
newest=${newest%.*}
read -r -a versions <<<"${SLUICE_K8S_VERSIONS:-1.31 $newest}"

# --- what to render -------------------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

targets=()   # directories kubectl kustomize renders
labels=()    # how each is named in the report
while read -r dir; do
  rel=${dir#./}
  if grep -q '^kind: Component' "$here/$rel/kustomization.yaml"; then
    # A component cannot render alone: check it on the base, without the other components.
    wrap=$tmp/with-${rel//\//-}
    mkdir -p "$wrap"
    printf 'resources:\n  - %s\ncomponents:\n  - %s\n' \
      "$(realpath --relative-to="$wrap" "$here/base")" \
      "$(realpath --relative-to="$wrap" "$here/$rel")" >"$wrap/kustomization.yaml"
    targets+=("$wrap")
    labels+=("base + $rel")
  else
    targets+=("$here/$rel")
    labels+=("$rel")
  fi
done < <(cd "$here" && find . -name kustomization.yaml -printf '%h\n' | sort)
[ "${#targets[@]}" -gt 0 ] || die "no kustomization.yaml under $here"

echo "kubectl kustomize $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p');" \
  "kubernetes-validate $kv_version --strict against Kubernetes ${versions[*]}"

# --- render and check each --------------------------------------------------------------------
failed=0
objects=0
for i in "${!targets[@]}"; do
  label=${labels[$i]}
  out=$tmp/rendered-$i.yaml
  err=$tmp/stderr-$i
  problems=()
  if ! kubectl kustomize "${targets[$i]}" >"$out" 2>"$err"; then
    problems+=("kubectl kustomize failed:" "$(cat "$err")")
  elif grep -qiE 'warn|deprecat' "$err"; then
    problems+=("kustomize warned:" "$(cat "$err")")
  fi
  count=$(grep -c '^kind:' "$out" || true)
  if [ "${#problems[@]}" -eq 0 ]; then
    [ "$count" -gt 0 ] || problems+=("rendered no object")
    for v in "${versions[@]}"; do
      # --quiet prints only warnings (no schema for a kind) and errors: any line is a problem.
      report=$("$kv" --strict --quiet -k "$v" "$out" 2>&1) && [ -z "$report" ] ||
        problems+=("schema check against $v:" "$report")
    done
    policy=$("$venv/bin/python" "$here/policy.py" "$out" 2>&1) || problems+=("$policy")
  fi
  kinds=$(grep '^kind:' "$out" | sort | uniq -c | awk '{printf "%s%s %s", sep, $3, $1; sep=", "}' || true)
  if [ "${#problems[@]}" -eq 0 ]; then
    printf 'ok    %-26s %3d objects: %s\n' "$label" "$count" "$kinds"
    objects=$((objects + count))
  else
    printf 'FAIL  %s\n' "$label"
    printf '%s\n' "${problems[@]}" | sed 's/^/      /'
    failed=$((failed + 1))
  fi
done

if [ "$failed" -gt 0 ]; then
  echo "validate.sh: $failed of ${#targets[@]} kustomizations FAILED" >&2
  exit 1
fi
echo "validate.sh: ${#targets[@]} kustomizations, $objects objects valid (schemas ${versions[*]}, policy)"
