"""The Kubernetes examples in collector-config/k8s/ are valid objects and agree with the sidecar's config.

Every document is validated offline against the OpenAPI schema of one pinned Kubernetes version
(kubernetes-validate bundles the schemas; strict mode refuses unknown fields, so a misspelt key
fails here rather than at `kubectl apply`). Then what the schema cannot know: the probes ask the
sidecar's health port for /health and /ready, the grace period outlasts the drain, the memory
request is the configured memory limit, the queue directory is a volume, the Collector Service
is where the exporter sends, and the PodDisruptionBudget selects the Collector's pods.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import load_config
from sidecar.config.schema import Config
from sidecar.config.validate import split_host_port

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "collector-config" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # native sidecars (restartPolicy: Always on an init container) are GA since 1.33
SIDECAR = "otlp-sidecar"
DEPLOYMENTS = {"app-deployment.yaml": "regular", "app-deployment-native-sidecar.yaml": "native"}

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$")
_FACTORS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def _quantity_bytes(text: str) -> float:
    match = _QUANTITY.match(str(text))
    assert match is not None, text
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _deployment(file_name: str) -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all((K8S_DIR / file_name).read_text()) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    return deployment


def _sidecar_container(pod: dict[str, Any], variant: str) -> dict[str, Any]:
    if variant == "native":
        (container,) = [c for c in pod.get("initContainers", []) if c["name"] == SIDECAR]
        assert container.get("restartPolicy") == "Always", "a native sidecar is an init container that keeps running"
        assert SIDECAR not in [c["name"] for c in pod["containers"]]
    else:
        (container,) = [c for c in pod["containers"] if c["name"] == SIDECAR]
        assert not pod.get("initContainers")
    return container


def _downward_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it (values and resourceFieldRefs)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]["resourceFieldRef"]
        assert ref.get("containerName", container["name"]) == container["name"]
        kind, resource = ref["resource"].split(".")
        amount = _quantity_bytes(container["resources"][kind][resource])
        env[var["name"]] = str(int(amount // _quantity_bytes(ref.get("divisor", "1"))))
    return env


def _sidecar_config(container: dict[str, Any], tmp_path: Path) -> Config:
    configmap = _find("ConfigMap", "otlp-sidecar-config")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return load_config(path, environ=_downward_env(container))


def _port(address: str) -> int:
    host_port = split_host_port(address)
    assert host_port is not None, address
    return host_port[1]


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in container.get("ports", [])}


def _probe_port(container: dict[str, Any], probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    port = get["port"]
    return get["path"], _named_ports(container)[port] if isinstance(port, str) else int(port)


# ------------------------------------------------------------------------------ the schema


def test_every_manifest_is_valid_for_the_pinned_kubernetes_version() -> None:
    docs = _documents()
    assert {name for name, _ in docs} == {"sidecar-configmap.yaml", "collector.yaml", "redis.yaml", *DEPLOYMENTS}
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Deployment", "PodDisruptionBudget",
                     "Service", "Service", "StatefulSet"]
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                        f"{'.'.join(str(p) for p in exc.path)}")


def test_the_validator_refuses_what_kubectl_would() -> None:
    """The check above is not vacuous: a misspelt field or a wrong type fails it, offline."""
    deployment = _deployment("app-deployment-native-sidecar.yaml")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# ------------------------------------------------------------------------------ the sidecar pods


@pytest.mark.parametrize("file_name", sorted(DEPLOYMENTS))
def test_sidecar_pod_matches_its_config(file_name: str, tmp_path: Path) -> None:
    deployment = _deployment(file_name)
    pod = deployment["spec"]["template"]["spec"]
    container = _sidecar_container(pod, DEPLOYMENTS[file_name])
    config = _sidecar_config(container, tmp_path)

    # The config the container reads is the ConfigMap's.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir = next(m["mountPath"] for name, m in mounts.items() if "configMap" in volumes[name])
    assert container["args"] == ["--config", f"{config_dir}/config.yaml"]
    assert volumes[next(n for n in mounts if "configMap" in volumes[n])]["configMap"]["name"] == "otlp-sidecar-config"

    # Probes: /health for liveness, /ready for readiness, on the health_check port. The start-up probe of a
    # native sidecar gates the application's start, so it asks /ready (accepting data); a regular one only
    # holds off the liveness probe during a replay, so /health.
    assert config.extensions.health_check is not None
    health_port = _port(config.extensions.health_check.endpoint)
    assert _probe_port(container, "livenessProbe") == ("/health", health_port)
    assert _probe_port(container, "readinessProbe") == ("/ready", health_port)
    startup = "/ready" if DEPLOYMENTS[file_name] == "native" else "/health"
    assert _probe_port(container, "startupProbe") == (startup, health_port)
    startup_seconds = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert startup_seconds >= 120, "a large disk queue replays before the probe gives up"


    # Ports: the receivers and /metrics, as configured; the admin API stays on loopback.
    otlp = config.receivers["otlp"].protocols
    assert otlp.grpc is not None and otlp.http is not None
    expected = {_port(otlp.grpc.endpoint), _port(otlp.http.endpoint), health_port,
                _port(config.service.telemetry.metrics.address)}
    assert set(_named_ports(container).values()) == expected
    assert config.extensions.admin is not None and config.extensions.admin.endpoint.startswith("127.0.0.1:")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == _port(config.service.telemetry.metrics.address)

    # The disk queue is on a volume, not in the container's (read-only) file system.
    assert config.extensions.file_storage is not None
    queue_dir = config.extensions.file_storage.directory
    for exporter in config.exporters.values():
        assert exporter.sending_queue.storage == "file_storage"
    (queue_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == queue_dir]
    assert not queue_mount.get("readOnly")
    assert "emptyDir" in volumes[queue_mount["name"]] or "persistentVolumeClaim" in volumes[queue_mount["name"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # Memory: the configured limit is the container's request; its limit leaves headroom above it.
    mib = 1024 * 1024
    assert config.service.memory_limit_mib is not None
    request = _quantity_bytes(container["resources"]["requests"]["memory"]) / mib
    limit = _quantity_bytes(container["resources"]["limits"]["memory"]) / mib
    assert config.service.memory_limit_mib == request
    assert 1.1 * request <= limit <= 2 * request

    # Shutdown: the drain (plus any preStop wait) ends before the kubelet's SIGKILL.
    pre_stop = 0.0
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is not None:
        command = " ".join(hook["exec"]["command"])
        match = re.search(r"time\.sleep\((\d+(?:\.\d+)?)\)", command)
        assert match is not None, command
        pre_stop = float(match.group(1))
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(config.service.shutdown_timeout) + pre_stop + 5, "the kubelet would SIGKILL mid-drain"

    # Fleet mode hands the backlog off within shutdown_timeout: its share leaves the drain at least half,
    # and the fleet's Redis is the Service of redis.yaml, with an append-only file on a persistent volume.
    fleet = config.extensions.fleet
    assert fleet is not None and "fleet" in config.service.extensions and fleet.handoff.enabled
    assert 0 < float(fleet.handoff.timeout) <= float(config.service.shutdown_timeout) / 2
    redis_service = _find("Service", "otlp-sidecar-redis")
    assert fleet.endpoint == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    redis = _find("StatefulSet", "otlp-sidecar-redis")
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and redis["spec"]["volumeClaimTemplates"]


@pytest.mark.parametrize("file_name", sorted(DEPLOYMENTS))
def test_application_sends_to_the_sidecar_and_the_sidecar_to_the_collector(file_name: str, tmp_path: Path) -> None:
    pod = _deployment(file_name)["spec"]["template"]["spec"]
    container = _sidecar_container(pod, DEPLOYMENTS[file_name])
    config = _sidecar_config(container, tmp_path)
    (app,) = [c for c in pod["containers"] if c["name"] != SIDECAR]
    otlp = config.receivers["otlp"].protocols
    assert otlp.grpc is not None
    app_env = {var["name"]: var.get("value") for var in app.get("env", [])}
    assert app_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://localhost:{_port(otlp.grpc.endpoint)}"

    service = _find("Service", "otel-collector")
    collector = _find("Deployment", "otel-collector")
    collector_container = collector["spec"]["template"]["spec"]["containers"][0]
    collector_config = yaml.safe_load(_find("ConfigMap", "otel-collector-config")["data"]["config.yaml"])
    grpc_port = _port(collector_config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    for exporter in config.exporters.values():
        for endpoint in exporter.endpoint_list():
            host, port = split_host_port(endpoint) or ("", 0)
            assert host == service["metadata"]["name"]
            (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
            assert _named_ports(collector_container)[service_port["targetPort"]] == grpc_port


def test_only_the_native_variant_orders_start_and_stop() -> None:
    regular = _deployment("app-deployment.yaml")["spec"]["template"]["spec"]
    native = _deployment("app-deployment-native-sidecar.yaml")["spec"]["template"]["spec"]
    # The regular variant lets the application flush while the sidecar still listens: a preStop wait.
    assert "preStop" in _sidecar_container(regular, "regular")["lifecycle"]
    # The native one needs none: the application stops before the sidecar is signalled.
    assert "lifecycle" not in _sidecar_container(native, "native")


# ------------------------------------------------------------------------------ the Collector


def test_collector_service_and_disruption_budget_select_the_collector_pods() -> None:
    collector = _find("Deployment", "otel-collector")
    labels = collector["spec"]["template"]["metadata"]["labels"]
    service = _find("Service", "otel-collector")
    budget = _find("PodDisruptionBudget", "otel-collector")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < collector["spec"]["replicas"], \
        "a drain may take a replica, never the last one"

    container = collector["spec"]["template"]["spec"]["containers"][0]
    config = yaml.safe_load(_find("ConfigMap", "otel-collector-config")["data"]["config.yaml"])
    health_port = _port(config["extensions"]["health_check"]["endpoint"])
    assert _probe_port(container, "readinessProbe")[1] == health_port
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["processors"][0] == "memory_limiter"
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind])
    mount = container["volumeMounts"][0]
    assert any(arg == f"--config={mount['mountPath']}/config.yaml" for arg in container["args"])
