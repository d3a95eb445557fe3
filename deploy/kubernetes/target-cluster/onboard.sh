#!/usr/bin/env bash
# Onboards a target cluster: applies rbac.yaml there (cacertd's ServiceAccount and its least
# privilege), then writes a kubeconfig for that ServiceAccount with a short-lived token
# (TokenRequest, `kubectl create token`) and the cluster's server and CA, checks that it can
# do what cacertd needs, and says how to hand it to cacertd.
#
#   deploy/kubernetes/target-cluster/onboard.sh --context CONTEXT --out FILE [--duration 24h]
#
# CONTEXT is a context of your kubeconfig (KUBECONFIG or ~/.kube/config) with the right to
# apply rbac.yaml. FILE is written 0600; it holds a bearer token. The token expires after
# --duration: run this again (or let whatever delivers kubeconfigs do it) before then.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
fail() {
  echo "onboard: $*" >&2
  exit 1
}

context="" out="" duration="24h"
while (($#)); do
  case "$1" in
    --context) context="${2:-}"; shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    --duration) duration="${2:-}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "onboard: unknown argument $1" >&2; usage ;;
  esac
done
if [ -z "$context" ] || [ -z "$out" ]; then usage; fi
here="$(cd "$(dirname "$0")" && pwd)"
k() { kubectl --context "$context" "$@"; }

server="$(kubectl config view --raw --minify --context "$context" \
  -o jsonpath='{.clusters[0].cluster.server}')" || fail "no context $context in your kubeconfig"
case "$server" in
  https://*) ;;
  *) fail "$context reaches its server over $server, not https: cacertd writes intermediate keys there and refuses it" ;;
esac
ca="$(kubectl config view --raw --minify --flatten --context "$context" \
  -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
[ -n "$ca" ] || fail "$context names no CA for $server (certificate-authority-data): cacertd verifies the server"

k apply -f "$here/rbac.yaml" >&2
token="$(k -n cacertd create token cacertd --duration "$duration")" \
  || fail "no token for ServiceAccount cacertd/cacertd (TokenRequest needs Kubernetes 1.22+ and kubectl 1.24+)"

umask 077
tmp="$(mktemp "${out}.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
cat > "$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: ${context}
  cluster:
    server: ${server}
    certificate-authority-data: ${ca}
users:
- name: cacertd
  user:
    token: ${token}
contexts:
- name: ${context}
  context: {cluster: ${context}, user: cacertd}
current-context: ${context}
KUBECONFIG
chmod 600 "$tmp"
mv "$tmp" "$out"
trap - EXIT

# What cacertd will do there; `cacertd check --connect` asks every permission.
for check in "get secrets/cacerts -n istio-system" "update secrets/cacerts -n istio-system" \
             "create secrets -n istio-system" "list configmaps --all-namespaces" \
             "patch deployments --all-namespaces"; do
  # shellcheck disable=SC2086
  [ "$(kubectl --kubeconfig "$out" auth can-i $check 2>/dev/null)" = yes ] \
    || fail "the kubeconfig written to $out may not: $check"
done
echo "wrote $out: ServiceAccount cacertd/cacertd on $server, token valid for $duration" >&2
echo "next: kubectl -n cacertd create secret generic cacertd-kubeconfigs --from-file=<cluster>.yaml=$out (in the management cluster; --dry-run=client -o yaml | kubectl apply -f - to update), then cacertd check --connect" >&2
