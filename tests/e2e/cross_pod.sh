#!/usr/bin/env bash
# End-to-end check against a real Kubernetes cluster (the one KUBECONFIG names): installs the
# chart, connects users to one pod and publishes through another, and fails on any loss.
# Needs helm, kubectl, and an image the cluster can pull (IMAGE_REPOSITORY, IMAGE_TAG).
# Not part of `make test`; run with `make e2e`.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${KUBECONFIG:?set KUBECONFIG to the cluster to test}"
NAMESPACE=${E2E_NAMESPACE:-herald-e2e}
RELEASE=${E2E_RELEASE:-herald-e2e}
IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-herald}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)}
for tool in helm kubectl; do
	command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done

pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	helm uninstall "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release --bin herald-bench
# herald-bench sends no API token, so this release opts out of the generated one; the peer
# port keeps its cluster secret and NetworkPolicy, which are what this test crosses.
helm upgrade --install "$RELEASE" ./helm/herald -n "$NAMESPACE" --create-namespace --wait \
	--set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" --set auth.mode=none \
	--set auth.apiTokens.generate=false
mapfile -t pods < <(kubectl get pods -n "$NAMESPACE" -l app.kubernetes.io/instance="$RELEASE" -o name)
[ "${#pods[@]}" -ge 2 ] || { echo "e2e: expected at least 2 pods, got ${#pods[@]}" >&2; exit 1; }

kubectl port-forward -n "$NAMESPACE" "${pods[0]}" 18080:8080 >/dev/null & pids+=($!)
kubectl port-forward -n "$NAMESPACE" "${pods[1]}" 19090:9090 >/dev/null & pids+=($!)
sleep 3

# Users on the first pod, publishes through the second: only the broadcast group can deliver.
target/release/herald-bench --ws=ws://127.0.0.1:18080/ws --grpc=http://127.0.0.1:19090 \
	--users=50 --topics=shared --rate=50 --duration=5s --json=target/e2e.json
lost=$(python3 -c 'import json,sys; r=json.loads(open("target/e2e.json").read().splitlines()[-1]); print(r["lost"] + r["duplicates"])')
[ "$lost" = 0 ] || { echo "e2e: $lost messages lost or duplicated across pods" >&2; exit 1; }
echo "e2e: cross-pod fan-out through ${pods[1]} to users on ${pods[0]}: no loss"
