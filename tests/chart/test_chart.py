"""The chart lints, renders valid Kubernetes objects, and keeps its promises.

Each check runs against every value set in chartlib.VALUE_SETS unless it is
about one value in particular.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

import chartlib
from chartlib import VALUE_SETS, only, render

VALUE_SET_NAMES = list(VALUE_SETS)
# The value sets of each broadcast backend: the mesh's peer discovery, Role
# and peer port are checked on the first, their absence on the second.
MESH_VALUE_SET_NAMES = [n for n in VALUE_SETS if chartlib.is_mesh(VALUE_SETS[n])]
REDIS_VALUE_SET_NAMES = [n for n in VALUE_SETS if not chartlib.is_mesh(VALUE_SETS[n])]

# Kinds that are CRDs, so not in the Kubernetes schemas kubernetes-validate
# ships; each has a structural check of its own below.
CRD_KINDS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
}

# Every metric herald exposes on /metrics; the dashboard must chart each one
# and nothing else.
HERALD_METRICS = {
    "herald_connections_open",
    "herald_connections_opened_total",
    "herald_connections_closed_total",
    "herald_subscriptions",
    "herald_topics",
    "herald_messages_published_total",
    "herald_messages_delivered_total",
    "herald_messages_dropped_total",
    "herald_bytes_out_total",
    "herald_delivery_latency_seconds",
    "herald_write_delay_seconds",
    "herald_peers_known",
    "herald_peers_connected",
    "herald_discovery_errors_total",
    "herald_peer_reconnects_total",
    "herald_refusals_total",
}

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


@pytest.fixture(scope="module", params=MESH_VALUE_SET_NAMES)
def mesh_rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The objects of one value set with the peer mesh."""
    return render(VALUE_SETS[request.param])


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The herald container of the Deployment."""
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["herald"]
    return containers[0]


@pytest.mark.parametrize("kube_version", chartlib.KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SET_NAMES)
def test_the_chart_lints_cleanly_in_strict_mode(name: str, kube_version: str) -> None:
    report = helm_python.lint(
        chartlib.CHART_DIR,
        VALUE_SETS[name],
        strict=True,
        namespace=chartlib.NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("kube_version", chartlib.KUBE_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(
    rendered: list[dict[str, Any]], kube_version: str
) -> None:
    for obj in rendered:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
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


def test_the_service_monitor_scrapes_the_admin_port_of_the_peer_service() -> None:
    # NB: a CRD too; check the fields the Prometheus Operator reads.
    assert not [o for o in render() if o["kind"] == "ServiceMonitor"]
    objects = render(VALUE_SETS["all"])
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": SELECTOR_LABELS}
    assert spec["namespaceSelector"] == {"matchNames": [chartlib.NAMESPACE]}
    assert spec["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "15s"}]
    # Only the peer Service names an admin port, so only it yields targets.
    with_admin = [
        s["metadata"]["name"]
        for s in objects
        if s["kind"] == "Service" and any(p["name"] == "admin" for p in s["spec"]["ports"])
    ]
    assert with_admin == ["herald-peers"]


def test_an_httproute_without_a_gateway_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="parentRefs"):
        render({"httpRoute": {"enabled": True}})


def test_the_role_grants_only_read_access_to_endpoints_and_endpointslices(
    mesh_rendered: list[dict[str, Any]],
) -> None:
    rendered = mesh_rendered
    role = only(rendered, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    ]
    assert not [o for o in rendered if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_role_is_bound_to_the_pods_service_account(mesh_rendered: list[dict[str, Any]]) -> None:
    rendered = mesh_rendered
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
        assert labels["helm.sh/chart"] == f"herald-{chart_version()}"


def test_selectors_use_only_the_name_and_instance_labels(rendered: list[dict[str, Any]]) -> None:
    deployment = only(rendered, "Deployment")
    selectors = [deployment["spec"]["selector"]["matchLabels"]]
    selectors += [s["spec"]["selector"] for s in rendered if s["kind"] == "Service"]
    selectors += [p["spec"]["selector"]["matchLabels"] for p in rendered if p["kind"] == "PodDisruptionBudget"]
    selectors += [n["spec"]["podSelector"]["matchLabels"] for n in rendered if n["kind"] == "NetworkPolicy"]
    selectors += [m["spec"]["selector"]["matchLabels"] for m in rendered if m["kind"] == "ServiceMonitor"]
    for selector in selectors:
        assert selector == SELECTOR_LABELS
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR_LABELS.items() <= pod_labels.items()


def chart_version() -> str:
    """The chart's own version from Chart.yaml."""
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        return str(chart.metadata["version"])


def test_the_chart_supports_kubernetes_1_27_and_later() -> None:
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        assert chart.metadata["kubeVersion"] == ">=1.27.0-0"
    assert chartlib.KUBE_VERSION == "1.27"


def test_app_version_follows_the_crate_version() -> None:
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        assert chart.metadata["appVersion"] == chartlib.cargo_version()


def test_the_peer_service_is_headless_and_publishes_not_ready_pods(
    mesh_rendered: list[dict[str, Any]],
) -> None:
    rendered = mesh_rendered
    peers = next(s for s in rendered if s["kind"] == "Service" and s["metadata"]["name"].endswith("-peers"))
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert peers["spec"]["ports"] == [
        {"name": "peer", "port": 7070, "targetPort": "peer", "protocol": "TCP"},
        {"name": "admin", "port": 9100, "targetPort": "admin", "protocol": "TCP"},
    ]
    assert f"--k8s-service={peers['metadata']['name']}" in container(rendered)["args"]


def test_the_client_service_exposes_http_and_grpc_over_h2c_or_tls(rendered: list[dict[str, Any]]) -> None:
    client = next(s for s in rendered if s["kind"] == "Service" and s["metadata"]["name"] == "herald")
    ports = {p["name"]: p for p in client["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8080, "http")
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (9090, "grpc")
    tls = any(a.startswith("--grpc-tls-cert-file=") for a in container(rendered)["args"])
    assert ports["grpc"]["appProtocol"] == ("https" if tls else "kubernetes.io/h2c")


def test_the_container_names_its_ports_and_probes_the_admin_port(mesh_rendered: list[dict[str, Any]]) -> None:
    c = container(mesh_rendered)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "grpc": 9090, "peer": 7070, "admin": 9100}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert "--admin-addr=0.0.0.0:9100" in c["args"]


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


def test_the_pod_drains_itself_with_no_prestop_hook(rendered: list[dict[str, Any]]) -> None:
    c = container(rendered)
    assert "lifecycle" not in c
    assert len([a for a in c["args"] if a.startswith("--drain-window=")]) == 1


def test_the_drain_window_fits_in_the_grace_period_with_ten_seconds_to_spare() -> None:
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert "--drain-window=10s" in pod["containers"][0]["args"]
    pod = only(render({"drainWindow": "30s", "terminationGracePeriodSeconds": 41}), "Deployment")
    assert "--drain-window=30s" in pod["spec"]["template"]["spec"]["containers"][0]["args"]
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds .30. must exceed drainWindow .20s."):
        render({"drainWindow": "20s"})
    with pytest.raises(helm_python.HelmRenderError, match="must exceed drainWindow"):
        render({"drainWindow": "0s", "terminationGracePeriodSeconds": 10})


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
    kinds = sorted(o["kind"] for o in render(chartlib.DEPLOY_VALUES))
    assert kinds == sorted(
        [
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    )


def test_the_network_policy_is_on_by_default_and_can_be_turned_off() -> None:
    assert only(render(), "NetworkPolicy")["metadata"]["name"] == "herald"
    assert not [o for o in render(VALUE_SETS["no-networkpolicy"]) if o["kind"] == "NetworkPolicy"]


def test_the_network_policy_selects_exactly_the_release_pods(rendered: list[dict[str, Any]]) -> None:
    # A policy whose podSelector missed the pods would leave the peer port
    # open while looking right.
    pod_labels = only(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for policy in (o for o in rendered if o["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        ports = {p["name"] for p in container(rendered)["ports"]}
        named = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert named == ports, "every container port needs a rule, or the policy closes it"


def test_the_network_policy_keeps_the_peer_port_for_herald_pods_only() -> None:
    policy = only(render(), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"peer", "http", "grpc", "admin"}
    assert rules["peer"]["from"] == [{"podSelector": {"matchLabels": SELECTOR_LABELS}}]
    assert "from" not in rules["http"]
    assert "from" not in rules["grpc"]
    assert rules["admin"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    policy = VALUE_SETS["all"]["networkPolicy"]
    rules = {r["ports"][0]["port"]: r for r in only(render(VALUE_SETS["all"]), "NetworkPolicy")["spec"]["ingress"]}
    assert rules["grpc"]["from"] == policy["grpcFrom"]
    assert rules["admin"]["from"] == policy["metricsFrom"]
    assert rules["peer"]["from"] == [{"podSelector": {"matchLabels": SELECTOR_LABELS}}]
    rules = {
        r["ports"][0]["port"]: r
        for r in only(render({"networkPolicy": {"enabled": True, "metricsFrom": []}}), "NetworkPolicy")["spec"][
            "ingress"
        ]
    }
    assert "from" not in rules["admin"]


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
    [
        {"bogus": 1},
        {"image": {"tagg": "x"}},
        {"discovery": {"api": "pods"}},
        {"limits": {"heartbeatInterval": "soon"}},
        {"limits": {"headerReadTimeout": "0s"}},
        {"limits": {"maxPendingHandshakes": 0}},
        {"drainWindow": "1m"},
        {"drainWindow": "500ms"},
        {"auth": {"mode": "oauth"}},
        {"preStopSleepSeconds": 5},
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "bad-enum",
        "bad-duration",
        "header-timeout-off",
        "no-pending-handshakes",
        "drain-in-minutes",
        "drain-in-ms",
        "bad-auth-mode",
        "removed-prestop",
    ],
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


def notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    return chartlib.render_templates(values)["herald/templates/NOTES.txt"]


def test_notes_explain_how_to_get_a_token_connect_and_publish() -> None:
    text = notes()
    assert "kubectl --namespace herald get secret herald-jwt -o jsonpath='{.data.secret}' | base64 -d" in text
    assert "herald token --jwt-secret-file herald-jwt-secret --sub 42 --topics 'room:*'" in text
    assert "exec deploy/herald -- herald token --jwt-secret-file /etc/herald/jwt/secret" in text
    assert "kubectl --namespace herald port-forward svc/herald 8080:8080" in text
    assert 'websocat -H "Authorization: Bearer $TOKEN" ws://127.0.0.1:8080/ws' in text
    assert '["herald.v1", "bearer." + token]' in text
    assert '{"op":"subscribe","topic":"room:1","ref":"1"}' in text
    assert 'herald publish --addr http://herald.herald.svc.cluster.local:9090 --token "$API_TOKEN" --topic room:1' in text
    assert "herald.v1.Publisher/Publish" in text
    assert "user:42" in text
    assert "the gRPC API is open" not in text


def test_notes_follow_the_auth_values() -> None:
    text = notes({"auth": {"jwt": {"issuer": "https://id.example.com/", "audience": "herald"}}})
    assert "--issuer \"https://id.example.com/\" --audience \"herald\"" in text
    text = notes(VALUE_SETS["deploy"])
    assert "get secret" not in text
    assert "herald token --jwt-secret-file" in text
    text = notes(VALUE_SETS["auth-publickey"])
    assert "herald token" not in text and "idp-keys" in text
    text = notes(VALUE_SETS["auth-none"])
    assert "auth is OFF" in text and "websocat ws://127.0.0.1:8080/ws" in text
    assert "websocat -H" not in text and "bearer." not in text
    text = notes(VALUE_SETS["apitokens"])
    assert '--token "$API_TOKEN"' in text and "the gRPC API is open" not in text
    assert "Secret my-api-tokens\n   (key tokens)" in text and "get secret my-api-tokens" not in text


def volumes(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's volumes and the herald container's mounts, by name."""
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0].get("volumeMounts", [])}
    return {v["name"]: v for v in pod.get("volumes", [])}, mounts


def secrets(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Secrets the chart generates, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}


def test_jwt_auth_is_on_by_default_with_a_generated_secret_mounted_read_only() -> None:
    objects = render()
    args = container(objects)["args"]
    assert "--auth=jwt" in args
    assert "--jwt-secret-file=/etc/herald/jwt/secret" in args
    vols, mounts = volumes(objects)
    assert vols["jwt"]["secret"]["secretName"] == "herald-jwt"
    assert mounts["jwt"] == {"name": "jwt", "mountPath": "/etc/herald/jwt", "readOnly": True}
    secret = secrets(objects)["herald-jwt"]
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    [value] = secret["data"].values()
    assert list(secret["data"]) == ["secret"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", base64.b64decode(value).decode())
    assert container(objects)["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("deploy", "--jwt-secret-file=/etc/herald/jwt/secret"),
        ("auth-publickey", "--jwt-public-key-file=/etc/herald/jwt/key.pem"),
        ("all", "--jwks-file=/etc/herald/jwt/jwks.json"),
    ],
)
def test_an_existing_jwt_secret_is_mounted_and_not_generated(name: str, flag: str) -> None:
    objects = render(VALUE_SETS[name])
    assert not {"herald-jwt", VALUE_SETS[name]["auth"]["jwt"]["existingSecret"]} & set(secrets(objects))
    args = container(objects)["args"]
    assert [a for a in args if a.startswith(("--jwt-secret-file", "--jwt-public-key-file", "--jwks-file"))] == [flag]
    vols, mounts = volumes(objects)
    assert vols["jwt"]["secret"]["secretName"] == VALUE_SETS[name]["auth"]["jwt"]["existingSecret"]
    assert mounts["jwt"]["readOnly"] is True
    assert flag.split("=", 1)[1].startswith(mounts["jwt"]["mountPath"] + "/")


def test_secret_volumes_are_mounted_whole_so_rotation_reaches_the_files(rendered: list[dict[str, Any]]) -> None:
    # NB: a subPath mount is a copy that never sees a rotated Secret.
    _, mounts = volumes(rendered)
    for mount in mounts.values():
        assert "subPath" not in mount and mount["readOnly"] is True


def test_the_issuer_and_audience_are_checked_when_set() -> None:
    args = container(render(VALUE_SETS["all"]))["args"]
    assert "--jwt-issuer=https://id.example.com/" in args
    assert "--jwt-audience=herald" in args
    assert not [a for a in container(render())["args"] if a.startswith(("--jwt-issuer", "--jwt-audience"))]


def test_auth_none_mounts_no_key_and_generates_no_jwt_secret() -> None:
    objects = render(VALUE_SETS["auth-none"])
    args = container(objects)["args"]
    assert "--auth=none" in args
    assert not [a for a in args if a.startswith(("--jwt", "--jwks"))]
    assert "herald-jwt" not in secrets(objects)
    vols, mounts = volumes(objects)
    assert "jwt" not in vols and "jwt" not in mounts
    # WebSocket auth is off, but the peer port and the gRPC API stay closed.
    assert set(secrets(objects)) == {"herald-cluster", "herald-api-tokens"}


@pytest.mark.parametrize(
    "jwt",
    [
        {"secretKey": "", "existingSecret": "k"},
        {"publicKeyKey": "key.pem", "existingSecret": "k"},
        {"secretKey": "", "publicKeyKey": "key.pem", "jwksKey": "jwks.json", "existingSecret": "k"},
        # secretKey is set by default: naming a provider does not replace it.
        {"oidcIssuer": chartlib.OIDC_ISSUER},
        {"jwksUrl": chartlib.JWKS_URL},
        {"secretKey": "", "jwksUrl": chartlib.JWKS_URL, "oidcIssuer": chartlib.OIDC_ISSUER},
        {"secretKey": "", "jwksKey": "jwks.json", "existingSecret": "k", "jwksUrl": chartlib.JWKS_URL},
    ],
    ids=["none", "two", "three", "default-secret-and-oidc", "default-secret-and-jwks-url", "url-and-oidc", "file-and-url"],
)
def test_exactly_one_jwt_key_must_be_named(jwt: dict[str, str]) -> None:
    message = re.escape(
        'auth.jwt: set exactly one of secretKey, publicKeyKey, jwksKey, jwksUrl and oidcIssuer '
        '(secretKey defaults to "secret": clear it with "" to use one of the others)'
    )
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render({"auth": {"jwt": jwt}})


def test_a_public_key_needs_an_existing_secret() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="need auth.jwt.existingSecret"):
        render({"auth": {"jwt": {"secretKey": "", "publicKeyKey": "key.pem"}}})


# Every flag that names where user-token keys come from.
JWT_KEY_FLAGS = ("--jwt-secret-file", "--jwt-public-key-file", "--jwks-file", "--jwks-url", "--oidc-issuer")


@pytest.mark.parametrize(
    ("jwt", "flag"),
    [
        ({"oidcIssuer": chartlib.OIDC_ISSUER}, f"--oidc-issuer={chartlib.OIDC_ISSUER}"),
        ({"jwksUrl": chartlib.JWKS_URL}, f"--jwks-url={chartlib.JWKS_URL}"),
        # A leftover existingSecret is not mounted either: nothing reads it.
        ({"oidcIssuer": chartlib.OIDC_ISSUER, "existingSecret": "idp-keys"}, f"--oidc-issuer={chartlib.OIDC_ISSUER}"),
        # A URL is passed whole, query string and all.
        ({"jwksUrl": "https://id.example.com/keys?tenant=a&v=2"}, "--jwks-url=https://id.example.com/keys?tenant=a&v=2"),
    ],
    ids=["oidc-issuer", "jwks-url", "oidc-issuer-with-existing-secret", "jwks-url-with-query"],
)
def test_an_identity_provider_is_passed_by_url_with_no_jwt_secret_generated_or_mounted(
    jwt: dict[str, str], flag: str
) -> None:
    objects = render({"auth": {"jwt": {"secretKey": "", **jwt}}})
    args = container(objects)["args"]
    assert "--auth=jwt" in args
    assert [a for a in args if a.startswith(JWT_KEY_FLAGS)] == [flag]
    # The issuer check is herald's own (the oidcIssuer), not a --jwt-issuer.
    assert not [a for a in args if a.startswith(("--jwt-issuer", "--jwks-ca-file"))]
    assert set(secrets(objects)) == {"herald-cluster", "herald-api-tokens"}
    vols, mounts = volumes(objects)
    assert "jwt" not in vols and "jwt" not in mounts
    assert not [v for v in vols.values() if v.get("secret", {}).get("secretName") in {"herald-jwt", "idp-keys"}]
    assert not [m for m in mounts.values() if m["mountPath"].startswith("/etc/herald/jwt")]


def test_the_provider_ca_config_map_is_mounted_read_only_and_passed_as_the_jwks_ca_file() -> None:
    for values, key in (
        (VALUE_SETS["auth-oidc"], "ca.crt"),
        ({"auth": {"jwt": {"secretKey": "", "jwksUrl": chartlib.JWKS_URL, "providerCA": {"configMap": "idp-ca", "key": "bundle.pem"}}}}, "bundle.pem"),
    ):
        objects = render(values)
        args = container(objects)["args"]
        assert [a for a in args if a.startswith("--jwks-ca-file")] == [f"--jwks-ca-file=/etc/herald/provider-ca/{key}"]
        vols, mounts = volumes(objects)
        assert vols["provider-ca"] == {"name": "provider-ca", "configMap": {"name": "idp-ca", "defaultMode": 0o444}}
        assert mounts["provider-ca"] == {"name": "provider-ca", "mountPath": "/etc/herald/provider-ca", "readOnly": True}
        # A CA is not secret: it is a ConfigMap, and no JWT Secret appears.
        assert "jwt" not in vols and set(secrets(objects)) == {"herald-cluster", "herald-api-tokens"}
    # Without providerCA the pods trust the image's system CA certificates.
    objects = render(VALUE_SETS["auth-jwksurl"])
    assert not [a for a in container(objects)["args"] if a.startswith("--jwks-ca-file")]
    assert "provider-ca" not in volumes(objects)[0]


@pytest.mark.parametrize(
    "jwt",
    [{}, {"secretKey": "", "jwksKey": "jwks.json", "existingSecret": "idp-keys"}],
    ids=["hs256-secret", "jwks-file"],
)
def test_a_provider_ca_without_an_identity_provider_is_refused(jwt: dict[str, str]) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="auth.jwt.providerCA .* needs auth.jwt.jwksUrl or auth.jwt.oidcIssuer"):
        render({"auth": {"jwt": {**jwt, "providerCA": {"configMap": "idp-ca"}}}})


@pytest.mark.parametrize(
    "url",
    [
        "http://id.example.com/keys",
        "http://localhost.example.com/keys",
        "id.example.com/keys",
        "https:///keys",
        "ftp://id.example.com/keys",
        "https://id.example.com/ keys",
    ],
)
@pytest.mark.parametrize("value", ["jwksUrl", "oidcIssuer"])
def test_the_schema_takes_provider_urls_over_https_and_plain_http_only_to_loopback(value: str, url: str) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"auth": {"jwt": {"secretKey": "", value: url}}})
    for ok in ("https://id.example.com", "http://127.0.0.1:8080/keys", "http://localhost/keys", "http://[::1]:9000"):
        assert render({"auth": {"jwt": {"secretKey": "", value: ok}}})


def test_notes_send_users_to_the_identity_provider_and_warn_the_pods_wait_for_its_keys() -> None:
    text = notes(VALUE_SETS["auth-oidc"])
    assert "Get a user token ($TOKEN below) from your identity provider" in text
    assert f"Its `iss` must be {chartlib.OIDC_ISSUER}." in text
    assert f"{chartlib.OIDC_ISSUER}/.well-known/openid-configuration, trusting the CA in\n   ConfigMap idp-ca." in text
    assert "not ready until they have fetched the first key set" in text
    assert "herald token" not in text and "herald-jwt" not in text
    text = notes(VALUE_SETS["auth-jwksurl"])
    assert f"herald fetches the keys from {chartlib.JWKS_URL}." in text
    assert "Its `iss` must be https://id.example.com/." in text
    assert "herald token" not in text and "herald-jwt" not in text


def test_an_existing_api_tokens_secret_is_mounted_and_not_generated() -> None:
    objects = render(VALUE_SETS["apitokens"])
    assert set(secrets(objects)) == {"herald-jwt", "herald-cluster"}
    assert "--api-tokens-file=/etc/herald/api-tokens/tokens" in container(objects)["args"]
    vols, mounts = volumes(objects)
    assert vols["api-tokens"]["secret"]["secretName"] == "my-api-tokens"
    assert mounts["api-tokens"] == {"name": "api-tokens", "mountPath": "/etc/herald/api-tokens", "readOnly": True}
    objects = render(VALUE_SETS["all"])
    assert "--api-tokens-file=/etc/herald/api-tokens/api-tokens" in container(objects)["args"]
    assert volumes(objects)[0]["api-tokens"]["secret"]["secretName"] == "herald-api-tokens"
    assert not secrets(objects)
    # An existing Secret wins over generate, which only covers the empty case.
    objects = render({"auth": {"apiTokens": {"existingSecret": "mine", "generate": False}}})
    assert "--api-tokens-file=/etc/herald/api-tokens/tokens" in container(objects)["args"]
    assert volumes(objects)[0]["api-tokens"]["secret"]["secretName"] == "mine"


# --- Peers and the gRPC API are closed by default ----------------------------

# Each flag that names a file from a Secret, and the volume it must be in.
SECRET_FILE_FLAGS = {
    "--cluster-secret-file": "cluster",
    "--api-tokens-file": "api-tokens",
    "--jwt-secret-file": "jwt",
    "--jwt-public-key-file": "jwt",
    "--jwks-file": "jwt",
    "--redis-password-file": "redis-password",
}


def generated_value(secret: dict[str, Any], key: str) -> str:
    """The decoded value of `key` in a generated Secret, after the checks
    every generated Secret must pass: kept on uninstall, Opaque, one key."""
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert secret["type"] == "Opaque"
    assert list(secret["data"]) == [key]
    return base64.b64decode(secret["data"][key]).decode()


def test_the_default_render_generates_a_cluster_secret_and_passes_it_to_the_pods() -> None:
    objects = render()
    value = generated_value(secrets(objects)["herald-cluster"], "secret")
    assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    vols, mounts = volumes(objects)
    assert vols["cluster"]["secret"]["secretName"] == "herald-cluster"
    assert mounts["cluster"] == {"name": "cluster", "mountPath": "/etc/herald/cluster", "readOnly": True}
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--cluster-secret-file")] == ["--cluster-secret-file=/etc/herald/cluster/secret"]


def test_an_existing_cluster_secret_is_mounted_and_not_generated() -> None:
    objects = render(VALUE_SETS["cluster-secret"])
    assert set(secrets(objects)) == {"herald-jwt", "herald-api-tokens"}
    assert volumes(objects)[0]["cluster"]["secret"]["secretName"] == "my-cluster-secret"
    assert "--cluster-secret-file=/etc/herald/cluster/shared" in container(objects)["args"]


def test_the_default_render_requires_a_generated_api_token_on_grpc() -> None:
    objects = render()
    value = generated_value(secrets(objects)["herald-api-tokens"], "tokens")
    # One plain token on one line: it may publish to every topic.
    assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    vols, mounts = volumes(objects)
    assert vols["api-tokens"]["secret"]["secretName"] == "herald-api-tokens"
    assert mounts["api-tokens"] == {"name": "api-tokens", "mountPath": "/etc/herald/api-tokens", "readOnly": True}
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--api-tokens-file")] == ["--api-tokens-file=/etc/herald/api-tokens/tokens"]


def test_turning_token_generation_off_leaves_the_grpc_api_open_and_says_so() -> None:
    objects = render(VALUE_SETS["apitokens-off"])
    assert set(secrets(objects)) == {"herald-jwt", "herald-cluster"}
    assert not [a for a in container(objects)["args"] if a.startswith("--api-tokens-file")]
    vols, mounts = volumes(objects)
    assert "api-tokens" not in vols and "api-tokens" not in mounts
    text = notes(VALUE_SETS["apitokens-off"])
    assert "WARNING: the gRPC API is open" in text and "networkPolicy.grpcFrom" in text
    assert "$API_TOKEN" not in text
    # The peer port stays closed all the same.
    assert "herald-cluster" in secrets(objects)


def test_every_secret_file_flag_points_inside_its_read_only_mount(rendered: list[dict[str, Any]]) -> None:
    vols, mounts = volumes(rendered)
    found = set()
    for arg in container(rendered)["args"]:
        flag, _, path = arg.partition("=")
        if flag not in SECRET_FILE_FLAGS:
            continue
        volume = SECRET_FILE_FLAGS[flag]
        found.add(volume)
        mount = mounts[volume]
        assert mount["readOnly"] is True and "subPath" not in mount
        assert path.startswith(mount["mountPath"] + "/"), arg
        assert "/" not in path.removeprefix(mount["mountPath"] + "/"), arg
        assert "secret" in vols[volume]
    assert {"cluster", "api-tokens", "jwt", "redis-password"} & set(mounts) <= found, "a Secret is mounted that no flag reads"


def test_generated_secrets_are_named_after_the_release_within_63_characters() -> None:
    objects = render(name="r" * 60)
    names = set(secrets(objects))
    assert len(names) == 3 and all(len(n) <= 63 for n in names)
    mounted = {v["secret"]["secretName"] for v in volumes(objects)[0].values()}
    assert mounted == names
    assert {n.rsplit("-", 1)[1] for n in names} == {"jwt", "cluster", "tokens"}


def test_each_generated_secret_reuses_its_own_stored_value_through_lookup() -> None:
    # NB: rendering offline, `lookup` always finds nothing, so an upgrade
    # cannot be simulated here: every render makes fresh values. What can
    # be checked is that each generated Secret takes its value from the one
    # helper that looks the Secret up, under the very name and key it
    # renders, and that the helper keeps a stored value over a fresh one.
    templates = chartlib.CHART_DIR / "templates"
    for path in sorted(templates.glob("secret-*.yaml")):
        text = path.read_text()
        assert "name: {{ $name }}" in text, path.name
        assert (
            '{{ $key }}: {{ include "herald.generatedSecretValue" (dict "root" . "name" $name "key" $key) | quote }}'
            in text
        ), path.name
        assert "randAlphaNum" not in text and 'lookup "' not in text, f"{path.name} bypasses the helper"
    helpers = (templates / "_helpers.tpl").read_text()
    helper = helpers[helpers.index('{{- define "herald.generatedSecretValue" -}}') :]
    helper = helper[: helper.index("{{- end }}\n\n")]
    assert 'lookup "v1" "Secret" .root.Release.Namespace .name' in helper
    assert "index $existing.data .key" in helper
    assert helper.index("randAlphaNum 48") < helper.index("lookup"), "the stored value must win"
    # Two offline renders differ, which is what the lookup is there to stop.
    assert secrets(render())["herald-cluster"]["data"] != secrets(render())["herald-cluster"]["data"]


def test_notes_show_how_to_read_the_generated_api_token_and_publish_with_it() -> None:
    text = notes()
    assert (
        "API_TOKEN=$(kubectl --namespace herald get secret herald-api-tokens -o jsonpath='{.data.tokens}' | base64 -d)"
    ) in text
    assert (
        'herald publish --addr http://herald.herald.svc.cluster.local:9090 --token "$API_TOKEN" --topic room:1'
    ) in text
    assert 'exec deploy/herald -- herald publish --token "$API_TOKEN" --topic room:1' in text
    assert 'grpcurl -plaintext -H "authorization: Bearer $API_TOKEN"' in text
    assert "`<token> room:*,user:*`" in text
    assert "cluster secret in Secret\nherald-cluster" in text
    # A key with a dot must be escaped in the JSONPath.
    text = notes({"auth": {"apiTokens": {"key": "api.tokens"}}})
    assert "-o jsonpath='{.data.api\\.tokens}'" in text


def test_the_demo_is_off_by_default_and_separate_from_client_publish() -> None:
    args = container(render())["args"]
    assert "--demo" not in args
    assert "/demo" not in notes()
    args = container(render({"demo": {"enabled": True}}))["args"]
    assert "--demo" in args and "--client-publish" not in args
    assert "the page can read but not send" in notes({"demo": {"enabled": True}})
    args = container(render(VALUE_SETS["demo"]))["args"]
    assert "--demo" in args and "--client-publish" in args
    text = notes(VALUE_SETS["demo"])
    assert "--sub alice --topics '*' --publish '*'" in text
    assert 'echo "http://127.0.0.1:8080/demo?token=$DEMO_TOKEN"' in text
    assert "read but not send" not in text


def test_the_dev_values_run_two_small_pods_with_the_demo_from_a_loaded_image() -> None:
    values = VALUE_SETS["dev"]
    assert values == yaml.safe_load(chartlib.DEV_VALUES_FILE.read_text())
    objects = render(values)
    deployment = only(objects, "Deployment")
    assert 1 <= deployment["spec"]["replicas"] <= 2
    c = container(objects)
    assert c["imagePullPolicy"] == "Never"
    assert {"--demo", "--client-publish"} <= set(c["args"])
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) <= 256
    [history] = [int(a.split("=")[1]) for a in c["args"] if a.startswith("--history-bytes=")]
    assert history <= int(limit[:-2]) * 2**20 // 4, "history must leave most of the memory limit to the pod"
    # Production defaults stay on.
    assert {"--auth=jwt"} <= set(c["args"])
    assert {"herald-jwt", "herald-cluster", "herald-api-tokens"} == set(secrets(objects))
    assert only(objects, "NetworkPolicy")


DOCS = ["README.md", "docs/kubernetes.md", "deploy/README.md", "helm/herald/values-dev.yaml"]


@pytest.mark.parametrize("doc", DOCS)
def test_every_value_the_docs_set_is_one_the_schema_knows(doc: str) -> None:
    # A renamed value would otherwise leave install commands that fail.
    with helm_python.Chart.load(chartlib.CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    text = (chartlib.REPO_ROOT / doc).read_text()
    keys = re.findall(r"--set ([A-Za-z][A-Za-z0-9.]*)=", text)
    # In prose, `value=x` too, when it starts at the top (`certManager.enabled=true`
    # under a TLS heading is relative to tls.peer or tls.grpc).
    keys += [
        k
        for k in re.findall(r"`([a-z][A-Za-z]*(?:\.[a-z][A-Za-z]*)+)=", text)
        if k.split(".")[0] in schema["properties"]
    ]
    unknown = []
    for key in keys:
        node = schema
        for part in key.split("."):
            node = node.get("properties", {}).get(part)
            if node is None:
                unknown.append(key)
                break
    assert not unknown, f"{doc} sets values the chart does not have: {unknown}"
    if doc == "docs/kubernetes.md":
        assert {"image.repository", "image.tag", "auth.apiTokens.existingSecret"} <= set(keys)


def test_client_publish_and_the_edge_limits_follow_the_values() -> None:
    args = container(render())["args"]
    assert "--client-publish" not in args
    assert not [a for a in args if a.startswith("--allowed-origins")]
    for flag in (
        "--max-connections=100000",
        "--max-connection-rate=1000",
        "--client-publish-rate=10",
        "--max-connection-rate-per-ip=50",
        "--max-connections-per-user=20",
        "--header-read-timeout=10s",
        "--max-pending-handshakes=1024",
    ):
        assert flag in args
    assert not [a for a in args if a.startswith(("--client-ip-header", "--trusted-proxies"))]
    args = container(render(VALUE_SETS["all"]))["args"]
    assert "--max-connection-rate-per-ip=100" in args
    assert "--max-connections-per-user=5" in args
    assert "--header-read-timeout=5s" in args
    assert "--max-pending-handshakes=4096" in args
    assert "--client-ip-header=X-Forwarded-For" in args
    assert "--trusted-proxies=10.0.0.0/8,192.168.1.7" in args
    assert "--client-publish" in args
    assert "--allowed-origins=https://app.example.com,https://admin.example.com" in args
    assert "--max-connections=2000000" in args
    assert "--client-publish-rate=5" in args


def test_pods_carry_scrape_annotations_unless_turned_off() -> None:
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
    meta = only(render(), "Deployment")["spec"]["template"]["metadata"]
    assert meta["annotations"] == scrape
    meta = only(render(VALUE_SETS["all"]), "Deployment")["spec"]["template"]["metadata"]
    assert meta["annotations"] == {**scrape, "example.com/scrape": "false"}
    meta = only(render({"metrics": {"podAnnotations": False}}), "Deployment")["spec"]["template"]["metadata"]
    assert "annotations" not in meta


def test_the_dashboard_config_map_holds_the_dashboard_for_the_grafana_sidecar() -> None:
    assert not [o for o in render() if o["kind"] == "ConfigMap"]
    cm = only(render(VALUE_SETS["dashboard"]), "ConfigMap")
    assert cm["metadata"]["name"] == "herald-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["herald.json"]) == json.loads(chartlib.DASHBOARD.read_text())


def test_the_dashboard_charts_every_herald_metric_and_only_those() -> None:
    dashboard = json.loads(chartlib.DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queried: set[str] = set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = re.findall(r"\bherald_[a-z_]+", target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            queried |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert queried - HERALD_METRICS == set(), "the dashboard queries metrics herald does not have"
    assert HERALD_METRICS - queried == set(), "metrics the dashboard does not chart"
    assert any("histogram_quantile(0.99" in t["expr"] for p in panels for t in p["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_deploy_is_rendered_with_user_created_secrets() -> None:
    deploy = chartlib.REPO_ROOT / "deploy"
    objects = [d for d in yaml.safe_load_all((deploy / "herald.yaml").read_text()) if d]
    assert not [o for o in objects if o["kind"] == "Secret"]
    args = container(objects)["args"]
    assert "--jwt-secret-file=/etc/herald/jwt/secret" in args
    assert "--cluster-secret-file=/etc/herald/cluster/secret" in args
    assert "--api-tokens-file=/etc/herald/api-tokens/tokens" in args
    vols, _ = volumes(objects)
    readme = (deploy / "README.md").read_text()
    for volume, key in (("jwt", "secret"), ("cluster", "secret"), ("api-tokens", "tokens")):
        name = vols[volume]["secret"]["secretName"]
        assert f"kubectl create secret generic {name} -n herald --from-literal={key}=" in readme
    assert (deploy / chartlib.DEPLOY_DASHBOARD).read_bytes() == chartlib.DASHBOARD.read_bytes()


# --- TLS -------------------------------------------------------------------

TLS_FLAGS = ("--grpc-tls-", "--peer-tls-")


def tls_args(objects: list[dict[str, Any]]) -> list[str]:
    """The container's --grpc-tls-* and --peer-tls-* flags, in order."""
    return [a for a in container(objects)["args"] if a.startswith(TLS_FLAGS)]


def certificates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The cert-manager Certificates, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}


def test_tls_is_off_by_default() -> None:
    objects = render()
    assert tls_args(objects) == []
    assert not certificates(objects)
    _, mounts = volumes(objects)
    assert set(mounts) == {"cluster", "jwt", "api-tokens"}


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("peer-tls-secret", "herald-peer-certs"),
        ("peer-tls-certmanager", "herald-peer-tls"),
        ("all", "herald-peer-tls"),
    ],
)
def test_peer_mtls_mounts_its_secret_read_only_and_passes_the_four_flags(name: str, secret: str) -> None:
    values = VALUE_SETS[name]
    objects = render(values)
    server_name = values["tls"]["peer"].get("serverName", "herald-peer")
    vols, mounts = volumes(objects)
    assert vols["peer-tls"]["secret"]["secretName"] == secret
    assert mounts["peer-tls"] == {"name": "peer-tls", "mountPath": "/etc/herald/peer-tls", "readOnly": True}
    peer = [a for a in tls_args(objects) if a.startswith("--peer-tls-")]
    assert peer == [
        "--peer-tls-cert-file=/etc/herald/peer-tls/tls.crt",
        "--peer-tls-key-file=/etc/herald/peer-tls/tls.key",
        "--peer-tls-ca-file=/etc/herald/peer-tls/ca.crt",
        f"--peer-tls-server-name={server_name}",
    ]


@pytest.mark.parametrize(
    ("name", "secret", "client_ca"),
    [
        ("grpc-tls-clientcerts", "herald-grpc-certs", True),
        ("grpc-tls-certmanager", "herald-grpc-tls", False),
        ("all", "herald-grpc-tls", True),
    ],
)
def test_grpc_tls_mounts_its_secret_read_only_and_passes_its_flags(name: str, secret: str, client_ca: bool) -> None:
    objects = render(VALUE_SETS[name])
    vols, mounts = volumes(objects)
    assert vols["grpc-tls"]["secret"]["secretName"] == secret
    assert mounts["grpc-tls"] == {"name": "grpc-tls", "mountPath": "/etc/herald/grpc-tls", "readOnly": True}
    grpc = [a for a in tls_args(objects) if a.startswith("--grpc-tls-")]
    expected = ["--grpc-tls-cert-file=/etc/herald/grpc-tls/tls.crt", "--grpc-tls-key-file=/etc/herald/grpc-tls/tls.key"]
    if client_ca:
        expected.append("--grpc-tls-client-ca-file=/etc/herald/grpc-tls/ca.crt")
    assert grpc == expected


def test_every_tls_flag_points_inside_a_read_only_mount(rendered: list[dict[str, Any]]) -> None:
    _, mounts = volumes(rendered)
    for arg in tls_args(rendered):
        flag, value = arg.split("=", 1)
        if flag == "--peer-tls-server-name":
            continue
        mount = next((m for m in mounts.values() if value.startswith(m["mountPath"] + "/")), None)
        assert mount is not None, f"{arg} is not inside a mounted volume"
        assert mount["readOnly"] is True and "subPath" not in mount
        assert value.rsplit("/", 1)[1] in {"tls.crt", "tls.key", "ca.crt"}


def test_peer_and_grpc_tls_are_independent() -> None:
    assert [a.split("=")[0] for a in tls_args(render(VALUE_SETS["peer-tls-secret"]))] == [
        "--peer-tls-cert-file",
        "--peer-tls-key-file",
        "--peer-tls-ca-file",
        "--peer-tls-server-name",
    ]
    objects = render(VALUE_SETS["grpc-tls-clientcerts"])
    assert not [a for a in tls_args(objects) if a.startswith("--peer-tls-")]
    assert "peer-tls" not in volumes(objects)[0]


def test_grpc_tls_without_client_certs_leaves_out_the_client_ca() -> None:
    values = {"tls": {"grpc": {"enabled": True, "existingSecret": "herald-grpc-certs"}}}
    assert not [a for a in tls_args(render(values)) if a.startswith("--grpc-tls-client-ca-file")]


def test_certificates_render_only_with_cert_manager_on_and_no_existing_secret() -> None:
    for name in ("defaults", "peer-tls-secret", "grpc-tls-clientcerts", "deploy"):
        assert not certificates(render(VALUE_SETS[name])), name
    assert set(certificates(render(VALUE_SETS["peer-tls-certmanager"]))) == {"herald-peer-tls"}
    assert set(certificates(render(VALUE_SETS["grpc-tls-certmanager"]))) == {"herald-grpc-tls"}
    assert set(certificates(render(VALUE_SETS["all"]))) == {"herald-peer-tls", "herald-grpc-tls"}
    # cert-manager on but TLS off: nothing.
    off = {"tls": {"peer": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}}
    objects = render(off)
    assert not certificates(objects) and not tls_args(objects)
    # An existing Secret wins over cert-manager.
    both = {"tls": {"peer": {"enabled": True, "existingSecret": "mine", "certManager": {"enabled": True}}}}
    objects = render(both)
    assert not certificates(objects)
    assert volumes(objects)[0]["peer-tls"]["secret"]["secretName"] == "mine"


def check_certificate(cert: dict[str, Any]) -> dict[str, Any]:
    """Structural checks of a cert-manager.io/v1 Certificate (a CRD, so
    kubernetes-validate has no schema for it); returns its spec."""
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert set(cert) == {"apiVersion", "kind", "metadata", "spec"}
    name = cert["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    spec = cert["spec"]
    assert set(spec) <= {
        "secretName",
        "secretTemplate",
        "dnsNames",
        "usages",
        "privateKey",
        "issuerRef",
        "commonName",
        "duration",
        "renewBefore",
        "ipAddresses",
        "uris",
        "isCA",
        "subject",
    }
    # The Secret the Deployment mounts is the one cert-manager writes.
    assert spec["secretName"] == name
    assert set(spec["issuerRef"]) == {"name", "kind", "group"}
    assert all(isinstance(v, str) and v for v in spec["issuerRef"].values())
    assert spec["dnsNames"] and all(isinstance(d, str) and d for d in spec["dnsNames"])
    # The usages cert-manager accepts (KeyUsage and ExtKeyUsage names).
    assert set(spec["usages"]) <= {"digital signature", "key encipherment", "server auth", "client auth"}
    assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
    assert spec["privateKey"]["encoding"] in {"PKCS1", "PKCS8"}
    assert spec["privateKey"]["rotationPolicy"] in {"Never", "Always"}
    assert STANDARD_LABEL_KEYS <= set(spec["secretTemplate"]["labels"])
    return spec


def test_the_peer_certificate_names_the_server_name_for_server_and_client_auth() -> None:
    values = VALUE_SETS["all"]
    objects = render(values)
    spec = check_certificate(certificates(objects)["herald-peer-tls"])
    assert spec["dnsNames"] == ["peer.herald.internal"]
    assert f"--peer-tls-server-name={spec['dnsNames'][0]}" in container(objects)["args"]
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["issuerRef"] == {"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    spec = check_certificate(certificates(render(VALUE_SETS["peer-tls-certmanager"]))["herald-peer-tls"])
    assert spec["dnsNames"] == ["herald-peer"]
    assert spec["issuerRef"] == {"name": "herald-ca", "kind": "Issuer", "group": "cert-manager.io"}


def test_the_grpc_certificate_names_the_client_service() -> None:
    spec = check_certificate(certificates(render(VALUE_SETS["all"]))["herald-grpc-tls"])
    assert spec["dnsNames"] == [
        "herald",
        "herald.herald",
        "herald.herald.svc",
        "herald.herald.svc.cluster.local",
        "herald-grpc.example.com",
    ]
    assert "server auth" in spec["usages"] and "client auth" not in spec["usages"]


def test_long_release_names_keep_the_tls_secret_names_within_63_characters() -> None:
    objects = render(VALUE_SETS["all"], name="r" * 60)
    names = set(certificates(objects))
    assert len(names) == 2 and all(len(n) <= 63 for n in names)
    secrets = {v["secret"]["secretName"] for n, v in volumes(objects)[0].items() if n.endswith("-tls")}
    assert secrets == names


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"peer": {"enabled": True}}}, "tls.peer.enabled needs a certificate: set tls.peer.existingSecret"),
        ({"tls": {"grpc": {"enabled": True}}}, "tls.grpc.enabled needs a certificate: set tls.grpc.existingSecret"),
        (
            {"tls": {"peer": {"enabled": True, "certManager": {"enabled": True}}}},
            "tls.peer.certManager.enabled needs tls.peer.certManager.issuerRef.name",
        ),
        (
            {"tls": {"grpc": {"enabled": True, "certManager": {"enabled": True}}}},
            "tls.grpc.certManager.enabled needs tls.grpc.certManager.issuerRef.name",
        ),
    ],
    ids=["peer-no-cert", "grpc-no-cert", "peer-no-issuer", "grpc-no-issuer"],
)
def test_tls_without_a_certificate_source_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"tls": {"peer": {"serverName": "Herald_Peer"}}},
        {"tls": {"peer": {"enabled": "yes"}}},
        {"tls": {"grpc": {"requireClientCerts": True}}},
        {"tls": {"grpc": {"certManager": {"issuerRef": {"namespace": "x"}}}}},
    ],
    ids=["bad-server-name", "not-a-boolean", "misspelt-key", "unknown-issuer-field"],
)
def test_the_schema_rejects_bad_tls_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


def test_the_client_service_speaks_https_on_grpc_when_tls_is_on() -> None:
    objects = render(VALUE_SETS["grpc-tls-clientcerts"])
    client = next(s for s in objects if s["kind"] == "Service" and s["metadata"]["name"] == "herald")
    [grpc] = [p for p in client["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc["appProtocol"] == "https"


def test_notes_give_the_https_address_and_the_client_tls_flags() -> None:
    text = notes(VALUE_SETS["grpc-tls-clientcerts"])
    assert (
        "herald publish --addr https://herald.herald.svc.cluster.local:9090 --ca-file herald-ca.crt "
        '--cert-file client.crt --key-file client.key --token "$API_TOKEN" --topic room:1'
    ) in text
    assert "get secret herald-grpc-certs -o jsonpath='{.data.ca\\.crt}' | base64 -d > herald-ca.crt" in text
    assert "grpcurl -cacert herald-ca.crt -cert client.crt -key client.key" in text
    assert "-plaintext" not in text and "http://herald" not in text
    # Client certificates close the API, so no warning.
    assert "the gRPC API is open" not in text
    text = notes(VALUE_SETS["grpc-tls-certmanager"])
    assert (
        'herald publish --addr https://herald.herald.svc.cluster.local:9090 --ca-file herald-ca.crt --token "$API_TOKEN" --topic'
    ) in text
    assert "--cert-file" not in text and "the gRPC API is open" not in text
    # The in-pod shortcut dials plain 127.0.0.1, which a TLS API refuses.
    assert "exec deploy/herald -- herald publish" not in text
    assert "restart the pods" in text
    text = notes(VALUE_SETS["peer-tls-secret"])
    assert "mutual TLS with the certificate in Secret\nherald-peer-certs" in text
    assert "--addr http://herald" in text and "restart the pods" not in text


# --- The redis broadcast backend ---------------------------------------------

# Flags of the peer mesh alone: its listener, Kubernetes discovery, the
# cluster secret proved in the peer handshake, and peer TLS.
MESH_FLAGS = ("--peer-addr", "--k8s-", "--cluster-secret-file", "--peer-tls-")


def redis_values(name: str) -> dict[str, Any]:
    """broadcast.redis of a redis value set, with the chart's default keys
    filled in."""
    redis = VALUE_SETS[name]["broadcast"]["redis"]
    return {
        "urlSecret": {"key": "url", **redis["urlSecret"]},
        "passwordSecret": {"name": "", "key": "password", **redis.get("passwordSecret", {})},
    }


@pytest.mark.parametrize("name", REDIS_VALUE_SET_NAMES)
def test_redis_pods_get_no_role_no_binding_and_no_service_account_token(name: str) -> None:
    # rbac.create stays true by default: the backend decides, not that value.
    assert VALUE_SETS[name].get("rbac") is None
    objects = render(VALUE_SETS[name])
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    # The ServiceAccount the pods run as is still the chart's own.
    assert only(objects, "ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"] == "herald"


@pytest.mark.parametrize("name", REDIS_VALUE_SET_NAMES)
def test_redis_pods_run_the_redis_backend_without_discovery_or_mesh_flags(name: str) -> None:
    args = container(render(VALUE_SETS[name]))["args"]
    assert [a for a in args if a.startswith(("--broadcast", "--discovery"))] == ["--broadcast=redis", "--discovery=none"]
    assert not [a for a in args if a.startswith(MESH_FLAGS)]
    # The cluster name namespaces the keys in Redis, so releases never mix.
    assert f"--cluster-name={chartlib.NAMESPACE}/herald" in args
    # The Redis backend has a ready timeout and a queue of its own.
    assert "--peer-ready-timeout=10s" in args and "--peer-queue=65536" in args


@pytest.mark.parametrize("name", REDIS_VALUE_SET_NAMES)
def test_the_redis_url_reaches_the_pods_only_from_its_secret(name: str) -> None:
    url = redis_values(name)["urlSecret"]
    objects = render(VALUE_SETS[name])
    c = container(objects)
    [var] = [e for e in c["env"] if e["name"] == "HERALD_REDIS_URL"]
    assert var == {
        "name": "HERALD_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": url["name"], "key": url["key"]}},
    }
    assert not [a for a in c["args"] if a.startswith("--redis-url")]
    # The chart creates no Secret for it: the user's Secret is the only source.
    assert url["name"] not in secrets(objects)


@pytest.mark.parametrize("name", REDIS_VALUE_SET_NAMES)
def test_redis_pods_have_no_peer_port_and_no_cluster_secret(name: str) -> None:
    objects = render(VALUE_SETS[name])
    c = container(objects)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "grpc": 9090, "admin": 9100}
    assert "herald-cluster" not in secrets(objects)
    vols, mounts = volumes(objects)
    assert "cluster" not in vols and "cluster" not in mounts
    # The headless Service stays, for the ServiceMonitor: the admin port only.
    peers = next(s for s in objects if s["kind"] == "Service" and s["metadata"]["name"] == "herald-peers")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert peers["spec"]["ports"] == [{"name": "admin", "port": 9100, "targetPort": "admin", "protocol": "TCP"}]
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["http", "grpc", "admin"]


def test_the_redis_password_secret_is_mounted_read_only_and_passed_as_a_file() -> None:
    password = redis_values("redis-password")["passwordSecret"]
    objects = render(VALUE_SETS["redis-password"])
    vols, mounts = volumes(objects)
    assert vols["redis-password"] == {
        "name": "redis-password",
        "secret": {"secretName": password["name"], "defaultMode": 0o440},
    }
    assert mounts["redis-password"] == {
        "name": "redis-password",
        "mountPath": "/etc/herald/redis-password",
        "readOnly": True,
    }
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--redis-password")] == [
        f"--redis-password-file=/etc/herald/redis-password/{password['key']}"
    ]
    # Without a password Secret the URL is all there is.
    objects = render(VALUE_SETS["redis"])
    assert "redis-password" not in volumes(objects)[0]
    assert not [a for a in container(objects)["args"] if a.startswith("--redis-password")]


def test_a_redis_pod_with_no_secret_files_mounts_nothing() -> None:
    pod = only(render(VALUE_SETS["redis-bare"]), "Deployment")["spec"]["template"]["spec"]
    assert "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]


def test_the_service_monitor_finds_redis_pods_through_the_headless_service() -> None:
    objects = render({**VALUE_SETS["redis"], "metrics": {"serviceMonitor": {"enabled": True}}})
    assert only(objects, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "admin"
    with_admin = [
        s["metadata"]["name"]
        for s in objects
        if s["kind"] == "Service" and any(p["name"] == "admin" for p in s["spec"]["ports"])
    ]
    assert with_admin == ["herald-peers"]


def test_the_mesh_ignores_the_redis_values() -> None:
    # Redis settings left behind after switching back to the mesh change
    # nothing: the default render is what a mesh with them renders.
    leftover = {"broadcast": {"redis": {"urlSecret": {"name": "herald-redis"}, "passwordSecret": {"name": "redis-auth"}}}}
    default, with_leftover = render(), render(leftover)
    for objects in (default, with_leftover):
        c = container(objects)
        assert not [a for a in c["args"] if a.startswith(("--broadcast", "--redis"))]
        assert not [e for e in c["env"] if e["name"].startswith("HERALD_REDIS")]
    # The generated Secrets hold fresh random values in every render.
    assert [o for o in with_leftover if o["kind"] != "Secret"] == [o for o in default if o["kind"] != "Secret"]


@pytest.mark.parametrize(
    "redis",
    [{}, {"passwordSecret": {"name": "redis-auth"}}, {"urlSecret": {"key": "url"}}],
    ids=["nothing", "password-only", "key-only"],
)
def test_a_redis_backend_without_a_url_secret_is_refused(redis: dict[str, Any]) -> None:
    message = "broadcast.backend=redis needs broadcast.redis.urlSecret.name: a Secret in the release namespace"
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render({"broadcast": {"backend": "redis", "redis": redis}})


def test_peer_tls_with_the_redis_backend_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="tls.peer secures the mesh's peer port"):
        render({**VALUE_SETS["redis"], **chartlib.PEER_TLS_SECRET})


@pytest.mark.parametrize(
    "broadcast",
    [
        {"backend": "nats"},
        {"backend": "Redis"},
        {"redis": {"url": "redis://redis:6379/0"}},
        {"redis": {"urlSecret": {"name": "herald-redis", "key": ""}}},
        {"redis": {"urlSecret": {"name": "Herald_Redis"}}},
        {"redis": {"passwordSecret": {"name": "redis-auth", "file": "/run/pw"}}},
    ],
    ids=["unknown-backend", "capitalised-backend", "plain-url", "empty-key", "bad-secret-name", "unknown-password-field"],
)
def test_the_schema_rejects_bad_broadcast_values(broadcast: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"broadcast": broadcast})


def test_notes_name_the_redis_secrets_instead_of_the_cluster_secret() -> None:
    text = notes(VALUE_SETS["redis-password"])
    assert "URL in Secret herald-redis (key redis-url), with the password in Secret\nredis-auth (key redis-password)" in text
    assert "under the cluster name herald/herald." in text
    assert "While Redis is down, publishes are refused" in text
    assert "cluster secret" not in text and "peer port" not in text
    text = notes(VALUE_SETS["redis"])
    assert "URL in Secret herald-redis (key url), under the cluster name" in text
    assert "Redis" not in notes()


@pytest.mark.parametrize("backend", ["mesh", "redis"])
def test_cluster_name_overrides_the_release_identity_to_share_topics_on_purpose(backend: str) -> None:
    values = VALUE_SETS["redis"] if backend == "redis" else {}
    args = container(render({**values, "cluster": {"name": "chat/prod"}}))["args"]
    assert [a for a in args if a.startswith("--cluster-name")] == ["--cluster-name=chat/prod"]
    # By default each release has its own: namespace and full name.
    args = container(render(values, name="other", namespace="chat"))["args"]
    assert [a for a in args if a.startswith("--cluster-name")] == ["--cluster-name=chat/other-herald"]
    with pytest.raises(helm_python.HelmValuesError):
        render({"cluster": {"name": "chat prod"}})
