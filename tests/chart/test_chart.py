"""The chart lints, renders valid Kubernetes objects, and keeps its promises.

Each check runs against every value set in chartlib.VALUE_SETS unless it is
about one value in particular.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

import chartlib
from chartlib import VALUE_SETS, only, render

VALUE_SET_NAMES = list(VALUE_SETS)

# Kinds that are CRDs, so not in the Kubernetes schemas kubernetes-validate
# ships; each has a structural check of its own below.
CRD_KINDS = {("gateway.networking.k8s.io/v1", "HTTPRoute")}

SELECTOR_LABELS = {
    "app.kubernetes.io/name": "herald",
    "app.kubernetes.io/instance": chartlib.RELEASE,
}
STANDARD_LABEL_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


@pytest.fixture(scope="module", params=VALUE_SET_NAMES)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The objects of one value set."""
    return render(VALUE_SETS[request.param])


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The herald container of the Deployment."""
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["herald"]
    return containers[0]


@pytest.mark.parametrize("name", VALUE_SET_NAMES)
def test_the_chart_lints_cleanly_in_strict_mode(name: str) -> None:
    report = helm_python.lint(
        chartlib.CHART_DIR,
        VALUE_SETS[name],
        strict=True,
        namespace=chartlib.NAMESPACE,
        kube_version=f"v{chartlib.KUBE_VERSION}.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_every_object_validates_against_the_kubernetes_schema(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, chartlib.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{e.message}; add it to CRD_KINDS with a structural check if it is a CRD")


def test_every_object_is_namespaced_to_the_release(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        assert obj["metadata"].get("namespace") == chartlib.NAMESPACE, obj["kind"]


def test_the_httproute_is_a_well_formed_gateway_api_route() -> None:
    # NB: HTTPRoute is a CRD, so kubernetes-validate has no schema for it;
    # check the fields Gateway API v1 requires and the ones we rely on.
    values = VALUE_SETS["all"]
    route = only(render(values), "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert set(route) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", route["metadata"]["name"])
    spec = route["spec"]
    assert set(spec) <= {"parentRefs", "hostnames", "rules"}
    assert spec["parentRefs"] == values["httpRoute"]["parentRefs"]
    assert spec["hostnames"] == values["httpRoute"]["hostnames"]
    [rule] = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "Exact", "value": "/ws"}}]
    assert rule["backendRefs"] == [{"name": "herald", "port": 8080}]


def test_an_httproute_without_a_gateway_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="parentRefs"):
        render({"httpRoute": {"enabled": True}})


def test_the_role_grants_only_read_access_to_endpoints_and_endpointslices(
    rendered: list[dict[str, Any]],
) -> None:
    role = only(rendered, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    ]
    assert not [o for o in rendered if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_role_is_bound_to_the_pods_service_account(rendered: list[dict[str, Any]]) -> None:
    binding = only(rendered, "RoleBinding")
    pod = only(rendered, "Deployment")["spec"]["template"]["spec"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": only(rendered, "Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": chartlib.NAMESPACE}
    ]
    assert only(rendered, "ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is True


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities(
    rendered: list[dict[str, Any]],
) -> None:
    pod = only(rendered, "Deployment")["spec"]["template"]["spec"]
    for ctx in (pod["securityContext"], container(rendered)["securityContext"]):
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == 65532
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(rendered)["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}


def test_every_object_carries_the_standard_labels(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert STANDARD_LABEL_KEYS <= set(labels), obj["kind"]
        assert labels["app.kubernetes.io/version"] == chartlib.cargo_version()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "herald-0.1.0"


def test_selectors_use_only_the_name_and_instance_labels(rendered: list[dict[str, Any]]) -> None:
    deployment = only(rendered, "Deployment")
    selectors = [deployment["spec"]["selector"]["matchLabels"]]
    selectors += [s["spec"]["selector"] for s in rendered if s["kind"] == "Service"]
    selectors += [p["spec"]["selector"]["matchLabels"] for p in rendered if p["kind"] == "PodDisruptionBudget"]
    selectors += [n["spec"]["podSelector"]["matchLabels"] for n in rendered if n["kind"] == "NetworkPolicy"]
    for selector in selectors:
        assert selector == SELECTOR_LABELS
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR_LABELS.items() <= pod_labels.items()


def test_app_version_follows_the_crate_version() -> None:
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        assert chart.metadata["appVersion"] == chartlib.cargo_version()


def test_the_peer_service_is_headless_and_publishes_not_ready_pods(
    rendered: list[dict[str, Any]],
) -> None:
    peers = next(s for s in rendered if s["kind"] == "Service" and s["metadata"]["name"].endswith("-peers"))
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert peers["spec"]["ports"] == [{"name": "peer", "port": 7070, "targetPort": "peer", "protocol": "TCP"}]
    assert f"--k8s-service={peers['metadata']['name']}" in container(rendered)["args"]


def test_the_client_service_exposes_http_and_grpc_over_h2c(rendered: list[dict[str, Any]]) -> None:
    client = next(s for s in rendered if s["kind"] == "Service" and s["metadata"]["name"] == "herald")
    ports = {p["name"]: p for p in client["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8080, "http")
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (9090, "grpc")
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_the_container_names_its_ports_and_probes_them(rendered: list[dict[str, Any]]) -> None:
    c = container(rendered)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "grpc": 9090, "peer": 7070}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_the_pod_learns_its_ip_and_namespace_from_the_downward_api(rendered: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in container(rendered)["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize("api", ["endpoints", "endpointslices"])
def test_the_k8s_api_flag_follows_the_discovery_api_value(api: str) -> None:
    args = container(render({"discovery": {"api": api}}))["args"]
    assert [a for a in args if a.startswith("--k8s-api")] == [f"--k8s-api={api}"]


def test_the_command_line_runs_kubernetes_discovery_in_this_release() -> None:
    args = container(render())["args"]
    assert args[0] == "serve"
    for flag in (
        "--http-addr=0.0.0.0:8080",
        "--grpc-addr=0.0.0.0:9090",
        "--peer-addr=0.0.0.0:7070",
        "--discovery=kubernetes",
        "--k8s-service=herald-peers",
        "--k8s-peer-port-name=peer",
        f"--cluster-name={chartlib.NAMESPACE}/herald",
        "--log-format=json",
    ):
        assert flag in args


def test_large_limits_are_passed_as_plain_integers() -> None:
    # NB: Helm holds numeric values as float64 and would print 1048576 as
    # 1.048576e+06 without the int64 in the template.
    args = container(render(VALUE_SETS["all"]))["args"]
    assert "--max-message-bytes=1048576" in args
    assert "--max-frame-bytes=2097152" in args


def test_extra_args_come_last() -> None:
    args = container(render({"extraArgs": ["--k8s-namespace=elsewhere"]}))["args"]
    assert args[-1] == "--k8s-namespace=elsewhere"


def test_the_pod_sleeps_before_sigterm_within_its_grace_period() -> None:
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    pod = only(render({"preStopSleepSeconds": 0}), "Deployment")["spec"]["template"]["spec"]
    assert "lifecycle" not in pod["containers"][0]
    with pytest.raises(helm_python.HelmRenderError, match="preStopSleepSeconds"):
        render({"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30})


def test_the_autoscaler_owns_the_replica_count_when_enabled() -> None:
    assert only(render(), "Deployment")["spec"]["replicas"] == 3
    assert not [o for o in render() if o["kind"] == "HorizontalPodAutoscaler"]
    objects = render(VALUE_SETS["hpa"])
    assert "replicas" not in only(objects, "Deployment")["spec"]
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "herald"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_disruption_budget_allows_one_pod_down_by_default() -> None:
    assert only(render(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not [o for o in render({"podDisruptionBudget": {"enabled": False}}) if o["kind"] == "PodDisruptionBudget"]


def test_optional_objects_are_off_by_default() -> None:
    kinds = sorted(o["kind"] for o in render())
    assert kinds == sorted(
        ["Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount"]
    )


def test_the_network_policy_keeps_the_peer_port_for_herald_pods_only() -> None:
    policy = only(render(VALUE_SETS["networkpolicy"]), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"peer", "http", "grpc"}
    assert rules["peer"]["from"] == [{"podSelector": {"matchLabels": SELECTOR_LABELS}}]
    assert "from" not in rules["http"]
    assert "from" not in rules["grpc"]
    grpc_from = VALUE_SETS["all"]["networkPolicy"]["grpcFrom"]
    rules = {r["ports"][0]["port"]: r for r in only(render(VALUE_SETS["all"]), "NetworkPolicy")["spec"]["ingress"]}
    assert rules["grpc"]["from"] == grpc_from


def test_the_ingress_routes_the_websocket_path_to_http() -> None:
    ingress = only(render(VALUE_SETS["ingress"]), "Ingress")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "herald.example.com"
    assert rule["http"]["paths"] == [
        {"path": "/ws", "pathType": "Exact", "backend": {"service": {"name": "herald", "port": {"name": "http"}}}}
    ]


def test_topology_spread_covers_each_key_when_enabled() -> None:
    assert "topologySpreadConstraints" not in only(render(), "Deployment")["spec"]["template"]["spec"]
    pod = only(render(VALUE_SETS["topologyspread"]), "Deployment")["spec"]["template"]["spec"]
    constraints = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for c in constraints:
        assert c["labelSelector"] == {"matchLabels": SELECTOR_LABELS}


@pytest.mark.parametrize(
    "values",
    [{"bogus": 1}, {"image": {"tagg": "x"}}, {"discovery": {"api": "pods"}}, {"limits": {"heartbeatInterval": "soon"}}],
    ids=["unknown-top-level", "unknown-nested", "bad-enum", "bad-duration"],
)
def test_the_schema_rejects_values_it_does_not_know(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


def test_every_value_has_a_comment_and_a_schema_entry() -> None:
    # Leaves and free-form maps/lists need a comment; a group such as
    # `image:` is documented by the comments on its keys.
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    lines = (chartlib.CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented, unknown = [], []
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = [k for _, k in stack]
        stack.append((indent, key))
        node = schema
        for k in parent:
            node = node.get("properties", {}).get(k, {})
        if node.get("additionalProperties") is not False:
            continue  # inside a free-form Kubernetes object, e.g. securityContext
        prop = node.get("properties", {}).get(key)
        if prop is None:
            unknown.append(".".join(parent + [key]))
            continue
        if prop.get("type") == "object" and prop.get("additionalProperties") is False:
            continue
        comment = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            comment.insert(0, previous.strip().lstrip("#").strip())
        text = " ".join(comment)
        if key not in text or "." not in text:
            undocumented.append(".".join(parent + [key]))
    assert not unknown, f"values.yaml keys missing from values.schema.json: {unknown}"
    assert not undocumented, f"values without a full-sentence comment naming them: {undocumented}"


def test_every_schema_property_has_a_default() -> None:
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        schema, values = chart.schema, chart.values

    def walk(node: dict[str, Any], value: Any, path: str) -> list[str]:
        missing = []
        for key, prop in node.get("properties", {}).items():
            if not isinstance(value, dict) or key not in value:
                missing.append(f"{path}{key}")
            elif prop.get("additionalProperties") is False:
                missing += walk(prop, value[key], f"{path}{key}.")
        return missing

    assert not walk(schema, values, "")


def test_the_values_file_is_plain_yaml() -> None:
    # The comment check above reads values.yaml line by line; make sure it
    # parses to what Helm sees.
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        assert yaml.safe_load((chartlib.CHART_DIR / "values.yaml").read_text()) == chart.values


def test_notes_explain_how_to_connect_and_publish() -> None:
    notes = chartlib.render_templates()["herald/templates/NOTES.txt"]
    assert "kubectl --namespace herald port-forward svc/herald 8080:8080" in notes
    assert "websocat ws://127.0.0.1:8080/ws" in notes
    assert '{"op":"subscribe","topic":"room:1","ref":"1"}' in notes
    assert "herald publish --addr http://herald.herald.svc.cluster.local:9090 --topic room:1" in notes
    assert "herald.v1.Publisher/Publish" in notes
