"""Render helm/herald offline and hand back the objects.

Shared by the chart checks (test_*.py) and by render_deploy.py, which writes
deploy/. Rendering goes through helm-python-sdk, which binds Helm's own Go
SDK (libhelm_c), so what we check is what `helm template` would produce,
schema validation included, without a `helm` binary or a cluster.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "herald"

# The release deploy/ is rendered for, and the one the checks use.
RELEASE = "herald"
NAMESPACE = "herald"

# The Kubernetes versions every object is validated against: the oldest the
# chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ["1.27", "1.30"]
KUBE_VERSION = KUBE_VERSIONS[0]

# What deploy/ is rendered with: the defaults, except that the JWT secret, the
# cluster secret and the API tokens are Secrets the user creates
# (deploy/README.md), with the names the chart would give them, because the
# Secrets the chart would generate are random and would make every render
# differ.
DEPLOY_VALUES: dict[str, Any] = {
    "cluster": {"secret": {"existingSecret": "herald-cluster"}},
    "auth": {"jwt": {"existingSecret": "herald-jwt"}, "apiTokens": {"existingSecret": "herald-api-tokens"}},
}

# The values for a laptop cluster that the chart ships beside values.yaml.
DEV_VALUES_FILE = CHART_DIR / "values-dev.yaml"
DEV_VALUES: dict[str, Any] = yaml.safe_load(DEV_VALUES_FILE.read_text())

# The Grafana dashboard the chart ships, and where deploy/ gets a copy of it.
DASHBOARD = CHART_DIR / "dashboards" / "herald.json"
DEPLOY_DASHBOARD = Path("grafana") / "herald-dashboard.json"

# Every optional object at once, and every list or map value filled in, so
# that one render exercises each template branch.
ALL_ON: dict[str, Any] = {
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"annotations": {"example.com/role": "herald"}},
    "discovery": {"api": "endpointslices", "peerReadyTimeout": "20s"},
    "cluster": {"secret": {"existingSecret": "herald-mesh", "key": "cluster-secret"}},
    "limits": {
        "maxMessageBytes": 1048576,
        "maxFrameBytes": 2097152,
        "clientQueue": 4096,
        "maxConnections": 2000000,
        "maxConnectionRate": 500,
        "maxConnectionRatePerIp": 100,
        "maxConnectionsPerUser": 5,
        "headerReadTimeout": "5s",
        "maxPendingHandshakes": 4096,
        "clientIpHeader": "X-Forwarded-For",
        "trustedProxies": ["10.0.0.0/8", "192.168.1.7"],
        "clientPublishRate": 5,
        "allowedOrigins": ["https://app.example.com", "https://admin.example.com"],
    },
    "auth": {
        "jwt": {
            "existingSecret": "idp-keys",
            "secretKey": "",
            "jwksKey": "jwks.json",
            "issuer": "https://id.example.com/",
            "audience": "herald",
        },
        "apiTokens": {"existingSecret": "herald-api-tokens", "key": "api-tokens"},
        "clientPublish": True,
    },
    "demo": {"enabled": True},
    "drainWindow": "20s",
    "terminationGracePeriodSeconds": 45,
    "log": {"format": "text", "level": "herald=debug,info"},
    "extraArgs": ["--k8s-namespace=herald"],
    "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "herald"}],
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "realtime"},
    "priorityClassName": "high",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "realtime", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "node-type", "operator": "In", "values": ["realtime"]}
                        ]
                    },
                }
            ]
        }
    },
    "topologySpread": {"enabled": True},
    "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
    "autoscaling": {"enabled": True},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
        "tls": [{"secretName": "herald-tls", "hosts": ["herald.example.com"]}],
    },
    "httpRoute": {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["herald.example.com"],
    },
    "networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"podSelector": {"matchLabels": {"app": "backend"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
        "dashboard": {"enabled": True},
    },
    "tls": {
        "peer": {
            "enabled": True,
            "serverName": "peer.herald.internal",
            "certManager": {"enabled": True, "issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer"}},
        },
        "grpc": {
            "enabled": True,
            "requireClientCert": True,
            "certManager": {
                "enabled": True,
                "extraDnsNames": ["herald-grpc.example.com"],
                "issuerRef": {"name": "herald-ca"},
            },
        },
    },
}

# TLS value sets: each Secret is a kubernetes.io/tls one, as cert-manager
# writes (tls.crt, tls.key, ca.crt).
PEER_TLS_SECRET: dict[str, Any] = {"tls": {"peer": {"enabled": True, "existingSecret": "herald-peer-certs"}}}
PEER_TLS_CERT_MANAGER: dict[str, Any] = {
    "tls": {"peer": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "herald-ca"}}}}
}
GRPC_TLS_CLIENT_CERTS: dict[str, Any] = {
    "tls": {"grpc": {"enabled": True, "existingSecret": "herald-grpc-certs", "requireClientCert": True}}
}
GRPC_TLS_CERT_MANAGER: dict[str, Any] = {
    "tls": {"grpc": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "herald-ca"}}}}
}

# An identity provider the keys come from, with no Secret: by OpenID Connect
# discovery (a Keycloak realm), or straight from its JWKS URL.
OIDC_ISSUER = "https://id.example.com/realms/app"
JWKS_URL = "https://id.example.com/realms/app/protocol/openid-connect/certs"

# The redis broadcast backend: the URL from a Secret the user creates (the
# least it needs), then with the password in a Secret of its own and keys
# other than the defaults, then with every other Secret mount turned off so
# that the pod mounts nothing at all.
REDIS: dict[str, Any] = {"broadcast": {"backend": "redis", "redis": {"urlSecret": {"name": "herald-redis"}}}}
REDIS_PASSWORD: dict[str, Any] = {
    "broadcast": {
        "backend": "redis",
        "redis": {
            "urlSecret": {"name": "herald-redis", "key": "redis-url"},
            "passwordSecret": {"name": "redis-auth", "key": "redis-password"},
        },
    },
    "presence": {"topics": ["room:*"]},
}
REDIS_BARE: dict[str, Any] = {
    **REDIS,
    "auth": {"mode": "none", "apiTokens": {"generate": False}},
    "networkPolicy": {"enabled": False},
}

# The value sets every check runs against, by name.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hpa": {"autoscaling": {"enabled": True}},
    "no-networkpolicy": {"networkPolicy": {"enabled": False}},
    "endpointslices": {"discovery": {"api": "endpointslices"}},
    "ingress": {"ingress": {"enabled": True}},
    "httproute": {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]}},
    "topologyspread": {"topologySpread": {"enabled": True}},
    "auth-none": {"auth": {"mode": "none"}},
    "auth-publickey": {"auth": {"jwt": {"existingSecret": "idp-keys", "secretKey": "", "publicKeyKey": "key.pem"}}},
    "auth-oidc": {"auth": {"jwt": {"secretKey": "", "oidcIssuer": OIDC_ISSUER, "providerCA": {"configMap": "idp-ca"}}}},
    "auth-jwksurl": {"auth": {"jwt": {"secretKey": "", "jwksUrl": JWKS_URL, "issuer": "https://id.example.com/"}}},
    "apitokens": {"auth": {"apiTokens": {"existingSecret": "my-api-tokens"}}},
    "apitokens-off": {"auth": {"apiTokens": {"generate": False}}},
    "cluster-secret": {"cluster": {"secret": {"existingSecret": "my-cluster-secret", "key": "shared"}}},
    "demo": {"demo": {"enabled": True}, "auth": {"clientPublish": True}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "dashboard": {"metrics": {"dashboard": {"enabled": True}}},
    "allowedorigins": {"limits": {"allowedOrigins": ["https://app.example.com"]}},
    "presence": {"presence": {"topics": ["room:*", "user:*"], "infoClaim": "profile"}},
    "peer-tls-secret": PEER_TLS_SECRET,
    "peer-tls-certmanager": PEER_TLS_CERT_MANAGER,
    "grpc-tls-clientcerts": GRPC_TLS_CLIENT_CERTS,
    "grpc-tls-certmanager": GRPC_TLS_CERT_MANAGER,
    "redis": REDIS,
    "redis-password": REDIS_PASSWORD,
    "redis-bare": REDIS_BARE,
    "deploy": DEPLOY_VALUES,
    "dev": DEV_VALUES,
    "all": ALL_ON,
}

# Helm's install order for the kinds this chart creates; deploy/ follows it
# so that `kubectl apply -f` creates a thing before what depends on it.
KIND_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Ingress",
    "HTTPRoute",
    "ServiceMonitor",
]


def render_templates(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Render the chart; returns template path → rendered text, NOTES.txt included."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(values=copy.deepcopy(values or {}), name=name, namespace=namespace)


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Render the chart and parse every manifest into a list of objects."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_templates(values, name=name, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def is_mesh(values: dict[str, Any]) -> bool:
    """Whether `values` keep the default broadcast backend, the peer mesh."""
    return values.get("broadcast", {}).get("backend", "mesh") == "mesh"


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of `kind`; fails when there are none or several."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def cargo_version() -> str:
    """The crate version from Cargo.toml's [package] table."""
    with open(REPO_ROOT / "Cargo.toml", "rb") as f:
        return str(tomllib.load(f)["package"]["version"])


def kind_rank(kind: str) -> int:
    """Position of `kind` in KIND_ORDER; unknown kinds go last, as in Helm."""
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
