#!/usr/bin/env bash
# The opt-in real-cluster suite: a kind cluster with the KubeRay operator (helm), the provider's Role
# from deploy/kuberay-rbac.yaml bound to a ServiceAccount, and `pytest -m kubernetes` run as that
# ServiceAccount (so the Role is proven sufficient). Needs docker (or podman), kind, helm, kubectl,
# and `make install` done. Not runnable on machines without a container engine.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-arp-kuberay}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.7.0}
NAMESPACE=${NAMESPACE:-ray-jobs}
WORK=$(mktemp -d)
for tool in kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-kuberay.sh needs $tool on PATH" >&2; exit 1; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
kind get kubeconfig --name "$CLUSTER" >"$WORK/admin.kubeconfig"
export KUBECONFIG="$WORK/admin.kubeconfig"

helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait --timeout 10m

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl create namespace airflow --dry-run=client -o yaml | kubectl apply -f -
kubectl -n airflow create serviceaccount airflow-worker --dry-run=client -o yaml | kubectl apply -f -
sed "s/namespace: ray-jobs/namespace: $NAMESPACE/" deploy/kuberay-rbac.yaml | kubectl apply -f -
# The test clusters' Ray pods run as the namespace's default ServiceAccount: let their heads check
# callers' Kubernetes tokens (ray_auth: kubernetes).
kubectl create clusterrolebinding "ray-authenticator-$NAMESPACE-default" --clusterrole ray-authenticator \
  --serviceaccount "$NAMESPACE:default" --dry-run=client -o yaml | kubectl apply -f -

# A kubeconfig that is only the ServiceAccount: the tests run with exactly the documented Role.
TOKEN=$(kubectl -n airflow create token airflow-worker --duration 2h)
SERVER=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
  | base64 -d >"$WORK/ca.crt"
KUBECONFIG="$WORK/worker.kubeconfig" kubectl config set-cluster kind --server "$SERVER" \
  --certificate-authority "$WORK/ca.crt" --embed-certs >/dev/null
KUBECONFIG="$WORK/worker.kubeconfig" kubectl config set-credentials airflow-worker --token "$TOKEN" >/dev/null
KUBECONFIG="$WORK/worker.kubeconfig" kubectl config set-context worker --cluster kind \
  --user airflow-worker --namespace "$NAMESPACE" >/dev/null
KUBECONFIG="$WORK/worker.kubeconfig" kubectl config use-context worker >/dev/null

KUBECONFIG="$WORK/worker.kubeconfig" ARP_K8S_NAMESPACE="$NAMESPACE" \
  .venv/bin/python -m pytest -p no:cacheprovider -m kubernetes tests/kubernetes_real "$@"
