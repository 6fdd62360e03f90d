"""The Helm chart ``helm/triggerfish``: values, rendering, and what the rendered objects say.

Rendering uses Helm's own engine (Helm's Go SDK, through the ``helm-python-sdk`` wheel,
no ``helm`` binary needed); the rendered objects are validated against the Kubernetes
OpenAPI schemas of the oldest supported and the newest packaged Kubernetes versions
(``kubernetes-validate``, strict: unknown fields fail), then installed into the fake API
server with the real ``kubectl``. Without the Helm engine the rendering tests are
skipped; the values checks (schema, ``# --`` docs) always run.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.compose.crds import KINDS, rendered_files
from tests.fakekube.harness import KubeApi
from tests.test_crds import custom_docs, seed_dir

CHART = Path(__file__).resolve().parents[1] / "helm" / "triggerfish"
RELEASE = "tf"
NAMESPACE = "argo-events"
PREFIX = "triggerfish/templates/"
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml kubeVersion floor, newest packaged


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """YAML 1.1 reads a bare ``=`` (an enum value Helm's toYaml leaves unquoted) as a
    special tag; Kubernetes' YAML 1.2 reads it as the string it is."""


def _plain_string(loader: Any, node: yaml.Node) -> Any:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:value", _plain_string)


def values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


@functools.cache
def values_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return data


def schema_errors(vals: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(values_schema())
    return [
        "/".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in validator.iter_errors(vals)
    ]


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with ``overrides`` merged in, as Helm merges ``--values``."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for k, v in extra.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(values(), overrides)


# ---------------------------------------------------------------------------------------
# values.yaml and values.schema.json (no renderer needed).


def test_values_match_their_schema() -> None:
    jsonschema.Draft7Validator.check_schema(values_schema())
    assert schema_errors(values()) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"controller": {"replica": 2}}, "'replica' was unexpected"),
        ({"controller": {"replicas": "two"}}, "'two' is not of type 'integer'"),
        ({"crds": {"install": "yes"}}, "'yes' is not of type 'boolean'"),
        ({"controller": {"rbac": {"namespace": True}}}, "'namespace' was unexpected"),
        ({"global": {"image": {"imagePullPolicy": "Sometimes"}}}, "is not one of"),
        ({"controller": {"config": {"LOG_LEVEL": "debug"}}}, "does not match"),
        ({"controller": {"ports": {"api": 70000}}}, "is greater than the maximum"),
        ({"controller": {"metrics": {"serviceMonitor": {"interval": "often"}}}}, "does not match"),
    ],
)
def test_values_schema_rejects_mistakes(overrides: dict[str, Any], expected: str) -> None:
    errors = schema_errors(merged(overrides))
    assert any(expected in e for e in errors), errors


def _key_paths(text: str) -> Iterator[tuple[str, bool]]:
    """``(dotted path, documented)`` for every key line of values.yaml; documented means
    a ``# --`` comment block sits right above it (helm-docs' rule)."""
    stack: list[tuple[int, str]] = []
    documented = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented = True
            continue
        if stripped.startswith("#"):
            continue  # continuation lines (# @default, prose) keep the flag
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            documented = False if stripped else documented
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        yield ".".join(k for _, k in stack), documented
        documented = False


def _leaves(data: Any, path: str = "") -> Iterator[str]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    else:
        yield path


def undocumented(text: str) -> list[str]:
    """Values of a values.yaml text with no ``# --`` doc on themselves or a parent map."""
    docs = dict(_key_paths(text))
    return [
        leaf
        for leaf in _leaves(yaml.safe_load(text))
        if not any(docs.get(".".join(leaf.split(".")[:n])) for n in range(1, leaf.count(".") + 2))
    ]


def test_every_value_is_documented() -> None:
    assert undocumented((CHART / "values.yaml").read_text()) == []


def test_doc_check_finds_undocumented_values() -> None:
    text = """
# -- documented as a whole
resources:
  limits: {}
group:
  # -- documented
  a: 1
  # plain comment, not a doc
  b: 2

  c: 3
"""
    assert undocumented(text) == ["group.b", "group.c"]


def test_components_share_one_values_shape() -> None:
    controller = values()["controller"]
    for key in (
        "image", "replicas", "resources", "nodeSelector", "tolerations", "affinity",
        "podAnnotations", "podLabels", "serviceAccount", "rbac", "priorityClassName",
    ):  # fmt: skip
        assert key in controller, key
    assert set(controller["image"]) == set(values()["global"]["image"])


# ---------------------------------------------------------------------------------------
# Rendering with Helm's engine.

try:
    import helm_python as helm
except ImportError:  # pragma: no cover - the test extra installs it
    helm = None

needs_helm = pytest.mark.skipif(
    helm is None, reason="Helm's engine (helm-python-sdk) not installed"
)


@functools.cache
def _render_text(overrides_json: str) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        out: dict[str, str] = chart.render(
            json.loads(overrides_json), name=RELEASE, namespace=NAMESPACE
        )
    return out


def render_text(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """``{template path: text}`` as ``helm template`` renders it (cached per values)."""
    return _render_text(json.dumps(overrides or {}, sort_keys=True))


@functools.cache
def _render(overrides_json: str) -> dict[str, list[dict[str, Any]]]:
    return {
        path.removeprefix(PREFIX): [
            d for d in yaml.load_all(text, Loader=_Loader) if isinstance(d, dict)
        ]
        for path, text in _render_text(overrides_json).items()
        if not path.endswith("NOTES.txt")
    }


def render(overrides: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{template path under templates/: [objects]}``, NOTES.txt left out (a copy)."""
    return copy.deepcopy(_render(json.dumps(overrides or {}, sort_keys=True)))


def objects(overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [o for objs in render(overrides).values() for o in objs]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def notes(overrides: dict[str, Any] | None = None) -> str:
    return render_text(overrides)[PREFIX + "NOTES.txt"]


ALL_ON = {"controller": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}}


@needs_helm
def test_helm_lint_is_clean() -> None:
    for vals in ({}, ALL_ON, {"controller": {"rbac": {"namespaced": True}}}):
        result = helm.lint(str(CHART), vals, strict=True)
        assert result["errors"] == []
        serious = [m for m in result["messages"] if m["severity"] > 1]
        assert serious == [], serious


@needs_helm
def test_helm_rejects_values_outside_the_schema() -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as info:
        chart.render({"controller": {"replica": 2}}, name=RELEASE, namespace=NAMESPACE)
    assert "replica" in str(info.value)


@needs_helm
def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted(o["kind"] for o in objects())
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
        + ["CustomResourceDefinition"] * 3
        + ["Service"]  # the event-flow page
    )
    kinds = sorted(o["kind"] for o in objects(ALL_ON))
    assert "Service" in kinds and "ServiceMonitor" in kinds


@needs_helm
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_objects_pass_kubernetes_schemas(kube_version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    checked = 0
    for vals in ({}, ALL_ON, {"controller": {"rbac": {"namespaced": True}}}):
        for obj in objects(vals):
            if obj["kind"] == "ServiceMonitor":
                continue  # a Prometheus Operator CRD, not in Kubernetes' schemas
            kv.validate(obj, kube_version, strict=True)
            checked += 1
    assert checked >= 20


@needs_helm
def test_chart_crds_are_the_generated_ones_plus_keep() -> None:
    crds = {c["metadata"]["name"]: c for c in by_kind(objects(), "CustomResourceDefinition")}
    assert set(crds) == {k.crd_name for k in KINDS}
    generated = {
        doc["metadata"]["name"]: doc for doc in map(yaml.safe_load, rendered_files().values())
    }
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "triggerfish"
        assert crd["spec"] == generated[name]["spec"]


@needs_helm
def test_crds_install_and_keep_switches() -> None:
    assert by_kind(objects({"crds": {"install": False}}), "CustomResourceDefinition") == []
    assert "crds.install=false" in notes({"crds": {"install": False}})
    unkept = by_kind(
        objects({"crds": {"keep": False, "annotations": {"example.com/owner": "platform"}}}),
        "CustomResourceDefinition",
    )
    assert len(unkept) == 3
    for crd in unkept:
        assert crd["metadata"]["annotations"] == {"example.com/owner": "platform"}


def controller_deployment(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    (deploy,) = by_kind(objects(overrides), "Deployment")
    return deploy


@needs_helm
def test_controller_deployment() -> None:
    deploy = controller_deployment()
    assert deploy["metadata"] == {
        "name": f"{RELEASE}-triggerfish-controller",
        "namespace": NAMESPACE,
        "labels": deploy["metadata"]["labels"],
    }
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-triggerfish-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"] == ["controller"]
    assert container["image"] == "ghcr.io/triggerfish/triggerfish:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert container["ports"] == [{"name": "api", "containerPort": 8080, "protocol": "TCP"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()

    scaled = controller_deployment({"controller": {"replicas": 2}})["spec"]
    assert scaled["replicas"] == 2 and "strategy" not in scaled


@needs_helm
def test_config_checksum_follows_the_config() -> None:
    rendered = render()
    (config,) = rendered["controller/config.yaml"]
    assert config["data"]["TRIGGERFISH_API_HOST"] == "0.0.0.0"
    assert config["data"]["TRIGGERFISH_API_PORT"] == "8080"
    assert config["data"]["TRIGGERFISH_CONTROLLER_IMAGE"] == "ghcr.io/triggerfish/triggerfish:0.1.0"
    assert "TRIGGERFISH_CONTROLLER_NAMESPACE" not in config["data"]
    assert config["data"]["TRIGGERFISH_CONTROLLER_LEASE_NAMESPACE"] == NAMESPACE
    (deploy,) = rendered["controller/deployment.yaml"]
    checksum = deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    text = render_text()[PREFIX + "controller/config.yaml"]
    assert checksum == hashlib.sha256(text.encode()).hexdigest()
    changed = controller_deployment({"controller": {"config": {"TRIGGERFISH_LOG_LEVEL": "DEBUG"}}})
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    same = controller_deployment({"controller": {"podAnnotations": {"a": "b"}}})
    annotations = same["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"checksum/config": checksum, "a": "b"}


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


WATCH_AND_WRITE = {"get", "list", "watch", "update", "patch"}
OWN = {"create", "get", "list", "watch", "update", "patch", "delete"}
EXPECTED_RULES = {
    **{("argoproj.io", r): WATCH_AND_WRITE for r in ("eventbus", "eventsources", "sensors")},
    **{
        ("argoproj.io", f"{r}/status"): WATCH_AND_WRITE
        for r in ("eventbus", "eventsources", "sensors")
    },
    **{
        ("argoproj.io", f"{r}/finalizers"): {"update"}
        for r in ("eventbus", "eventsources", "sensors")
    },
    ("apps", "deployments"): OWN,
    ("apps", "statefulsets"): OWN,
    ("", "services"): OWN,
    ("", "secrets"): OWN,
    ("", "configmaps"): OWN,
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},  # leader election
    ("rbac.authorization.k8s.io", "roles"): OWN,
    ("rbac.authorization.k8s.io", "rolebindings"): OWN,
}


@needs_helm
def test_rbac_is_least_privilege_and_cluster_wide_by_default() -> None:
    objs = objects()
    (role,) = by_kind(objs, "ClusterRole")
    assert _rules(role) == EXPECTED_RULES
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": f"{RELEASE}-triggerfish-controller",
            "namespace": NAMESPACE,
        }
    ]
    assert by_kind(objs, "Role") == [] and by_kind(objs, "RoleBinding") == []


@needs_helm
def test_rbac_namespaced() -> None:
    objs = objects({"controller": {"rbac": {"namespaced": True}}})
    assert by_kind(objs, "ClusterRole") == [] and by_kind(objs, "ClusterRoleBinding") == []
    (role,) = by_kind(objs, "Role")
    (binding,) = by_kind(objs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == EXPECTED_RULES
    assert binding["roleRef"]["kind"] == "Role"
    (config,) = by_kind(objs, "ConfigMap")
    assert config["data"]["TRIGGERFISH_CONTROLLER_NAMESPACE"] == NAMESPACE
    assert f'namespace "{NAMESPACE}" only' in notes({"controller": {"rbac": {"namespaced": True}}})


@needs_helm
def test_rbac_off_and_existing_service_account() -> None:
    objs = objects(
        {
            "controller": {
                "rbac": {"create": False},
                "serviceAccount": {"create": False, "name": "x"},
            }
        }
    )
    kinds = {o["kind"] for o in objs}
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    (deploy,) = by_kind(objs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "x"


@needs_helm
def test_metrics_service_and_service_monitor() -> None:
    objs = objects(ALL_ON)
    (service,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    (deploy,) = by_kind(objs, "Deployment")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "api", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    (monitor,) = by_kind(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


@needs_helm
def test_chart_installs_into_the_fake_api_and_serves_the_seed(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    """What ``helm install`` would send, applied with kubectl; then the seed manifests."""
    kube_api.create_namespace(NAMESPACE)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects(), sort_keys=False))
    kube_api.kubectl("apply", "-f", str(rendered))
    deploys = kube_api.kubectl_json("get", "deployments", "-n", NAMESPACE)["items"]
    assert [d["metadata"]["name"] for d in deploys] == [f"{RELEASE}-triggerfish-controller"]
    kube_api.kubectl("apply", "-n", NAMESPACE, "-f", str(seed_dir()))
    listed = kube_api.kubectl("get", "eb,es,sn", "-n", NAMESPACE, "-o", "name").stdout.split()
    assert len(listed) == len(custom_docs(seed_dir()))


@needs_helm
def test_event_flow_page_service() -> None:
    """The controller serves the event-flow page on its API port; a Service reaches it."""
    objs = objects({"controller": {"ui": {"argoWorkflowsUrl": "https://argo.example.com"}}})
    (service,) = by_kind(objs, "Service")
    (deploy,) = by_kind(objs, "Deployment")
    (config,) = by_kind(objs, "ConfigMap")
    assert service["metadata"]["name"].endswith("-controller-ui")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "api", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert config["data"]["TRIGGERFISH_CONTROLLER_UI"] == "true"
    assert config["data"]["TRIGGERFISH_UI__ARGO_WORKFLOWS_URL"] == "https://argo.example.com"
    assert config["data"]["TRIGGERFISH_API_HOST"] == "0.0.0.0"
    off = objects({"controller": {"ui": {"enabled": False}}})
    assert by_kind(off, "Service") == []
    assert by_kind(off, "ConfigMap")[0]["data"]["TRIGGERFISH_CONTROLLER_UI"] == "false"
    only_api = objects({"controller": {"ui": {"service": {"enabled": False}}}})
    assert by_kind(only_api, "Service") == []
    name = service["metadata"]["name"]
    assert f"port-forward svc/{name} 8080:8080" in notes()
    assert "port-forward" not in notes({"controller": {"ui": {"enabled": False}}})
