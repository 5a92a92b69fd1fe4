"""The deployment files agree with each other and with the code.

docker-compose.yml, the Dockerfiles, the sidecar and Collector configs in collector-config/, the
Prometheus scrape config, the alert rules and the Grafana dashboard are only text here (no Docker
engine runs the tests), so this checks what would otherwise break only at `docker compose up`:
files that do not exist, a mounted config that does not validate, ports and host names that do not
line up between services, and alerts or panels on metric names the sidecar does not export.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import load_config
from sidecar.config.schema import Config
from sidecar.config.validate import split_host_port
from sidecar.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
SIDECAR_CONFIG_TARGET = "/etc/otlp-sidecar/config.yaml"
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_])(?:sidecar|process)_[a-z_]+")


# ------------------------------------------------------------------------------------------ helpers


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _yaml(ROOT / "docker-compose.yml")
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return _yaml(CONFIG_DIR / "otelcol-upstream.yaml")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the bind mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((ROOT / volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((ROOT / source, target))
    return mounts


def _named_volumes(service: dict[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "volume":
                names.append(volume["source"])
        elif not volume.split(":")[0].startswith((".", "/")):
            names.append(volume.split(":")[0])
    return names


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _port(address: str | None) -> int:
    assert address is not None
    host_port = split_host_port(address)
    assert host_port is not None, address
    return host_port[1]


def _sidecar_config_path(service: dict[str, Any]) -> Path:
    sources = [source for source, target in _bind_mounts(service) if target == SIDECAR_CONFIG_TARGET]
    assert len(sources) == 1, f"the sidecar service mounts one config at {SIDECAR_CONFIG_TARGET}"
    return sources[0]


@pytest.fixture(scope="module")
def sidecar_config(services: dict[str, dict[str, Any]]) -> Config:
    """The config the compose sidecar runs with, loaded with exactly the environment compose gives it."""
    sidecar = services["sidecar"]
    return load_config(_sidecar_config_path(sidecar), environ=_environment(sidecar))


def _sidecar_ports(config: Config) -> dict[str, int]:
    otlp = config.receivers["otlp"].protocols
    assert otlp.grpc is not None and otlp.http is not None and config.extensions.health_check is not None
    return {"grpc": _port(otlp.grpc.endpoint), "http": _port(otlp.http.endpoint),
            "health": _port(config.extensions.health_check.endpoint),
            "metrics": _port(config.service.telemetry.metrics.address)}


def _collector_ports(collector: dict[str, Any]) -> dict[str, int]:
    protocols = collector["receivers"]["otlp"]["protocols"]
    readers = collector["service"]["telemetry"]["metrics"]["readers"]
    return {"grpc": _port(protocols["grpc"]["endpoint"]), "http": _port(protocols["http"]["endpoint"]),
            "health": _port(collector["extensions"]["health_check"]["endpoint"]),
            "telemetry": int(readers[0]["pull"]["exporter"]["prometheus"]["port"]),
            "app_metrics": _port(collector["exporters"]["prometheus"]["endpoint"])}


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def _dockerfile(path: Path) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return joined


def _instruction(lines: list[str], name: str) -> list[str]:
    return [line[len(name):].strip() for line in lines if line.split(" ", 1)[0].upper() == name]


def _exposed_metric_names() -> set[str]:
    """Every sample name a scrape of the sidecar's registry can show.

    A labelled metric has no samples until a child is created, so names also come from each
    family's type, as prometheus-client exposes them (`_total` on counters, `_bucket/_sum/_count`
    on histograms, `_created` on both).
    """
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.update({family.name + "_total", family.name + "_created"})
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
        else:
            names.add(family.name)
    return names


def _dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield target["expr"]


# ---------------------------------------------------------------------------------- docker compose


def test_every_file_compose_refers_to_exists(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile} is missing"
        else:
            assert service.get("image"), f"{name}: neither build nor image"
        for source, target in _bind_mounts(service):
            assert source.exists(), f"{name}: mounts {source} at {target}, which does not exist"
        for volume in _named_volumes(service):
            assert volume in (compose.get("volumes") or {}), f"{name}: volume {volume!r} is not declared"
        for config in service.get("configs", []):
            config_name = config if isinstance(config, str) else config["source"]
            assert (ROOT / compose["configs"][config_name]["file"]).is_file()
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name}: depends on unknown service {dependency!r}"


def test_services_of_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert {"app", "sidecar", "otel-collector", "jaeger", "prometheus"} <= set(services)
    assert services["sidecar"]["build"]["context"] == "."
    assert "opentelemetry-collector-contrib" in services["otel-collector"]["image"]
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_sidecar_mounted_config_validates_with_the_compose_environment(sidecar_config: Config) -> None:
    # load_config raised already if it did not; what matters for the stack:
    assert sidecar_config.extensions.file_storage is not None
    assert sidecar_config.extensions.file_storage.directory == "/var/lib/otlp-sidecar"
    for exporter in sidecar_config.exporters.values():
        assert exporter.sending_queue.storage == "file_storage", "the compose demo survives a SIGKILL"


def test_sidecar_queue_directory_is_a_volume(services: dict[str, dict[str, Any]], sidecar_config: Config) -> None:
    assert sidecar_config.extensions.file_storage is not None
    directory = sidecar_config.extensions.file_storage.directory
    targets = [v.split(":")[1] for v in services["sidecar"]["volumes"] if isinstance(v, str)]
    assert directory in targets, "the queue must outlive the container"
    assert f'VOLUME ["{directory}"]' in _dockerfile(ROOT / "Dockerfile")


def test_sidecar_exports_to_the_collector_service(services: dict[str, dict[str, Any]], sidecar_config: Config,
                                                  collector: dict[str, Any]) -> None:
    collector_grpc_port = _collector_ports(collector)["grpc"]
    for name, exporter in sidecar_config.exporters.items():
        assert name.startswith("otlp_grpc")
        for endpoint in exporter.endpoint_list():
            host_port = split_host_port(endpoint)
            assert host_port == ("otel-collector", collector_grpc_port), endpoint
            assert host_port[0] in services
        assert exporter.tls.insecure, "the Collector's receiver has no TLS in the compose network"
        assert "tls" not in collector["receivers"]["otlp"]["protocols"]["grpc"]


def test_sidecar_depends_on_the_collector_and_drains_before_kill(services: dict[str, dict[str, Any]],
                                                                 sidecar_config: Config) -> None:
    sidecar = services["sidecar"]
    assert "otel-collector" in sidecar["depends_on"]
    grace = _duration_seconds(sidecar["stop_grace_period"])
    assert grace > sidecar_config.service.shutdown_timeout, "docker would SIGKILL the sidecar mid-drain"


def test_sidecar_published_ports_match_its_config(services: dict[str, dict[str, Any]],
                                                  sidecar_config: Config) -> None:
    ports = set(_sidecar_ports(sidecar_config).values())
    assert _container_ports(services["sidecar"]) == ports
    exposed = {int(p) for line in _instruction(_dockerfile(ROOT / "Dockerfile"), "EXPOSE") for p in line.split()}
    assert exposed == ports
    assert sidecar_config.extensions.admin is not None
    assert _port(sidecar_config.extensions.admin.endpoint) not in _container_ports(services["sidecar"])


def test_app_sends_to_the_sidecar(services: dict[str, dict[str, Any]], sidecar_config: Config) -> None:
    app = services["app"]
    env = _environment(app)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://sidecar:{_sidecar_ports(sidecar_config)['grpc']}"
    assert "sidecar" in app["depends_on"]
    assert app["depends_on"]["sidecar"]["condition"] == "service_healthy", "the sidecar image has a HEALTHCHECK"
    # Gating the app's start is the readiness question: /ready, which ignores the Collector's state.
    check = " ".join(services["sidecar"]["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)/ready'", check)
    assert match is not None and int(match.group(1)) == _sidecar_ports(sidecar_config)["health"]
    dockerfile = _dockerfile(ROOT / app["build"]["context"] / app["build"]["dockerfile"])
    assert "opentelemetry-exporter-otlp-proto-grpc" in " ".join(_instruction(dockerfile, "RUN"))


def test_collector_config_is_consistent(services: dict[str, dict[str, Any]], collector: dict[str, Any]) -> None:
    ports = _collector_ports(collector)
    for pipeline_name, pipeline in collector["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"{pipeline_name}: {component} is not defined"
        assert pipeline["processors"][0] == "memory_limiter", "memory_limiter goes first"
    for extension in collector["service"]["extensions"]:
        assert extension in collector["extensions"]
    jaeger_host, jaeger_port = split_host_port(collector["exporters"]["otlp/jaeger"]["endpoint"]) or ("", 0)
    assert jaeger_host in services and jaeger_port == 4317
    mounted = [t for s, t in _bind_mounts(services["otel-collector"]) if s == CONFIG_DIR / "otelcol-upstream.yaml"]
    assert mounted and any(mounted[0] in arg for arg in services["otel-collector"]["command"])
    assert {ports["health"], ports["telemetry"], ports["app_metrics"]} <= _container_ports(services["otel-collector"])
    assert ports["grpc"] not in _container_ports(services["otel-collector"]), \
        "the host's 4317 belongs to the sidecar, so applications on the host cannot bypass it"


# ------------------------------------------------------------------------------------------ images


def test_dockerfile_healthcheck_uses_the_health_port(sidecar_config: Config) -> None:
    lines = _dockerfile(ROOT / "Dockerfile")
    (healthcheck,) = _instruction(lines, "HEALTHCHECK")
    match = re.search(r"http://127\.0\.0\.1:(\d+)/health\b", healthcheck)
    assert match is not None and "urllib" in healthcheck and "curl" not in healthcheck
    port = int(match.group(1))
    assert port == _sidecar_ports(sidecar_config)["health"]
    # The image's own default config (used without a mount) answers on the same port.
    (default_copy,) = [c for c in _instruction(lines, "COPY") if c.endswith(SIDECAR_CONFIG_TARGET)]
    default = load_config(ROOT / default_copy.split()[0], environ={})
    assert _sidecar_ports(default)["health"] == port


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    lines = _dockerfile(ROOT / "Dockerfile")
    assert lines[0] == "FROM python:3.11-slim"
    assert json.loads(_instruction(lines, "ENTRYPOINT")[0]) == ["otlp-sidecar"]
    assert json.loads(_instruction(lines, "CMD")[0]) == ["--config", SIDECAR_CONFIG_TARGET]
    (user,) = _instruction(lines, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any(run.startswith("pip install .") for run in _instruction(lines, "RUN"))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "collector-config/Dockerfile.example-app"])
def test_dockerfile_copies_exist_in_the_context_and_are_not_ignored(dockerfile: str) -> None:
    path = ROOT / dockerfile
    context = path.parent
    ignore_file = context / ".dockerignore"
    ignored = [p.strip() for p in ignore_file.read_text().splitlines()
               if p.strip() and not p.startswith("#")] if ignore_file.exists() else []
    for copy in _instruction(_dockerfile(path), "COPY"):
        if "--from" in copy:
            continue
        for source in copy.split()[:-1]:
            assert (context / source).exists(), f"{dockerfile}: COPY {source}: not in the build context"
            parts = Path(source).parts
            for pattern in ignored:
                assert not any(fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))), \
                    f"{dockerfile}: COPY {source} is excluded by .dockerignore ({pattern})"


def test_example_app_sends_traces_with_errors_metrics_and_logs_through_the_sdk() -> None:
    from tests.fakes.collector import FakeCollector

    with FakeCollector() as fake:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{fake.grpc_endpoint}",
               "OTEL_SERVICE_NAME": "example-app"}
        result = subprocess.run([sys.executable, str(CONFIG_DIR / "example_app.py"), "--iterations", "10",
                                 "--interval", "0"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        spans = fake.spans()
        assert len(spans) >= 20
        assert any(span.status.code == 2 for span in spans), "some spans are errors"
        assert fake.log_records() and fake.metric_point_count() > 0


# --------------------------------------------------------------------------------- prometheus


def test_prometheus_scrapes_services_and_ports_that_exist(services: dict[str, dict[str, Any]],
                                                          sidecar_config: Config,
                                                          collector: dict[str, Any]) -> None:
    config = _yaml(CONFIG_DIR / "prometheus.yml")
    collector_ports = _collector_ports(collector)
    listening = {"sidecar": {_sidecar_ports(sidecar_config)["metrics"]},
                 "otel-collector": {collector_ports["telemetry"], collector_ports["app_metrics"]}}
    targets = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = split_host_port(target) or ("", 0)
                assert host in services, f"{job['job_name']}: {target} is not a compose service"
                assert port in listening.get(host, set()), f"{job['job_name']}: nothing listens on {target}"
                targets[job["job_name"]] = target
    assert targets["otlp-sidecar"] == f"sidecar:{_sidecar_ports(sidecar_config)['metrics']}"
    assert f"otel-collector:{collector_ports['telemetry']}" in targets.values()
    # The rule files are mounted beside prometheus.yml, where the relative names resolve.
    mounts = dict((str(s.relative_to(ROOT)), t) for s, t in _bind_mounts(services["prometheus"]))
    config_dir = Path(mounts["collector-config/prometheus.yml"]).parent
    for rule_file in config["rule_files"]:
        assert (CONFIG_DIR / rule_file).is_file()
        assert mounts[f"collector-config/{rule_file}"] == str(config_dir / rule_file)


def test_alert_rules_cover_the_required_conditions() -> None:
    rules = {rule["alert"]: rule for group in _yaml(CONFIG_DIR / "alerts.yml")["groups"] for rule in group["rules"]}
    assert {"SidecarCircuitBreakerOpen", "SidecarDegraded", "SidecarDroppingItems", "SidecarQueueNearlyFull",
            "SidecarErrorRateSpike", "SidecarMemoryNearLimit"} <= set(rules)
    # What is about to happen (issue 17): each on the metric that says it.
    foresight = {"SidecarQueueFullSoon": "sidecar_exporter_queue_time_to_full_seconds < 600",
                 "SidecarDeliveryLagging": "sidecar_exporter_queue_oldest_age_seconds > 300",
                 "SidecarErrorRateAnomaly": "increase(sidecar_error_rate_anomalies_total[10m])",
                 "SidecarExportLatencyHigh": "histogram_quantile(0.99,",
                 "SidecarEndpointUnhealthy": "sidecar_endpoint_healthy == 0",
                 "SidecarRetryBudgetExhausted": "increase(sidecar_exporter_retries_refused_total[5m])",
                 "SidecarReceiverRefusing": "sidecar_receiver_refused_log_records_total",
                 "SidecarConfigReloadFailed": 'sidecar_config_reloads_total{result="invalid"}'}
    for name, needle in foresight.items():
        assert needle in rules[name]["expr"], name
    assert rules["SidecarCircuitBreakerOpen"]["expr"] == "sidecar_breaker_state == 2"
    assert rules["SidecarCircuitBreakerOpen"]["for"] == "1m"
    assert rules["SidecarDegraded"]["expr"] == "sidecar_degradation_level >= 2"
    assert "increase(sidecar_dropped_items_total[5m])) > 0" in rules["SidecarDroppingItems"]["expr"]
    assert rules["SidecarQueueNearlyFull"]["expr"] == \
        "sidecar_exporter_queue_size / sidecar_exporter_queue_capacity > 0.8"
    assert "sum by (instance, category) (rate(sidecar_errors_total[5m]))" in rules["SidecarErrorRateSpike"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_memory_alert_uses_the_memory_limit_of_the_compose_sidecar(sidecar_config: Config) -> None:
    rules = {rule["alert"]: rule for group in _yaml(CONFIG_DIR / "alerts.yml")["groups"] for rule in group["rules"]}
    expr = rules["SidecarMemoryNearLimit"]["expr"]
    match = re.search(r"process_resident_memory_bytes\{[^}]*\} / \((\d+) \* 1024 \* 1024\) > 0\.8", expr)
    assert match is not None, expr
    assert float(match.group(1)) == sidecar_config.service.memory_limit_mib


def test_alerts_and_dashboard_use_only_metrics_the_sidecar_exports() -> None:
    exposed = _exposed_metric_names()
    assert {"sidecar_breaker_state", "sidecar_dropped_items_total", "sidecar_export_duration_seconds_bucket",
            "process_resident_memory_bytes"} <= exposed
    alerts = set(METRIC_NAME.findall((CONFIG_DIR / "alerts.yml").read_text()))
    dashboard = set(METRIC_NAME.findall((CONFIG_DIR / "grafana-dashboard.json").read_text()))
    assert len(alerts) >= 6 and len(dashboard) >= 15
    assert alerts - exposed == set(), "alerts.yml uses metrics that do not exist"
    assert dashboard - exposed == set(), "grafana-dashboard.json uses metrics that do not exist"


def test_dashboard_shows_what_an_operator_needs() -> None:
    dashboard = json.loads((CONFIG_DIR / "grafana-dashboard.json").read_text())
    exprs = "\n".join(_dashboard_exprs(dashboard))
    for needed in ("sidecar_exporter_queue_size", "sidecar_exporter_queue_capacity", "sidecar_degradation_level",
                   "sidecar_breaker_state", "sidecar_exporter_sent_spans_total",
                   "sidecar_exporter_send_failed_spans_total", "sidecar_dropped_items_total",
                   "sidecar_errors_total", "sidecar_exporter_retries_total", "sidecar_enriched_items_total",
                   "histogram_quantile(0.5, sum by (le, endpoint) (rate(sidecar_export_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, endpoint) (rate(sidecar_export_duration_seconds_bucket",
                   "sidecar_exporter_queue_oldest_age_seconds", "sidecar_exporter_queue_time_to_full_seconds",
                   "sidecar_exporter_delivery_latency_seconds_bucket", "sidecar_error_rate_anomaly{",
                   "sidecar_error_rate_anomalies_total"):
        assert needed in exprs, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "exporter"} <= variables
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
    for variable in re.findall(r"\$(\w+)", exprs):
        assert variable in variables | {"__rate_interval", "__range"}, variable


# The metric families and alerts each have their entry in docs/: tests/unit/test_docs.py.


# ----------------------------------------------------------------------------------- promtool

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def _promtool(*args: str) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@promtool
def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    _promtool("check", "rules", "collector-config/alerts.yml")
    _promtool("check", "config", "collector-config/prometheus.yml")


@promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    _promtool("test", "rules", "collector-config/alerts_test.yml")


@promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((CONFIG_DIR / "grafana-dashboard.json").read_text())
    substitutions = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*",
                     "$exporter": ".*"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs(dashboard)):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


# ----------------------------------------------------------------------- production config + TLS


def _write_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a client certificate signed by it, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("otlp-sidecar")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": directory / "ca.pem", "cert": directory / "client.pem", "key": directory / "client-key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def test_production_config_validates_with_real_tls_files(tmp_path: Path) -> None:
    files = _write_tls_files(tmp_path)
    env = {"SIDECAR_TLS_CA_FILE": str(files["ca"]), "SIDECAR_TLS_CERT_FILE": str(files["cert"]),
           "SIDECAR_TLS_KEY_FILE": str(files["key"])}
    config = load_config(CONFIG_DIR / "sidecar-production.yaml", environ=env)

    exporter = config.exporters["otlp_grpc"]
    assert exporter.endpoint_list() == ["collector-a:4317", "collector-b:4317"]
    assert not exporter.tls.insecure
    assert (exporter.tls.ca_file, exporter.tls.cert_file, exporter.tls.key_file) == \
        (str(files["ca"]), str(files["cert"]), str(files["key"]))
    assert exporter.sending_queue.storage == "file_storage" and exporter.sending_queue.synchronous == "FULL"
    assert config.extensions.file_storage is not None
    assert config.extensions.file_storage.directory == "/var/lib/otlp-sidecar"
    assert config.extensions.admin is not None and config.extensions.admin.endpoint == "127.0.0.1:4320"
    assert config.extensions.health_check is not None
    assert set(config.service.extensions) == {"health_check", "file_storage", "admin"}
    assert config.receivers["otlp"].include_metadata
    assert config.service.memory_limit_mib == 512
    assert config.service.telemetry.metrics.address == "0.0.0.0:8889"
    assert {"degradation"} <= {name for p in config.service.pipelines.values() for name in p.processors}

    # The files are what a TLS client loads: the key matches the certificate, the CA parses.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=exporter.tls.ca_file)
    context.load_cert_chain(exporter.tls.cert_file or "", exporter.tls.key_file)

    overridden = load_config(CONFIG_DIR / "sidecar-production.yaml", environ={
        **env, "SIDECAR_UPSTREAM_A": "otel-a.example:4317", "SIDECAR_UPSTREAM_B": "otel-b.example:4317",
        "SIDECAR_STORAGE_DIR": str(tmp_path / "queue"), "SIDECAR_MEMORY_LIMIT_MIB": "1024"})
    assert overridden.exporters["otlp_grpc"].endpoint_list() == ["otel-a.example:4317", "otel-b.example:4317"]
    assert overridden.service.memory_limit_mib == 1024


def test_production_config_refuses_missing_tls_files(tmp_path: Path) -> None:
    from sidecar.config import ConfigError

    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "sidecar-production.yaml", environ={
            "SIDECAR_TLS_CA_FILE": missing, "SIDECAR_TLS_CERT_FILE": missing, "SIDECAR_TLS_KEY_FILE": missing})
    assert f"exporters.otlp_grpc.tls.ca_file: file not found: {missing}" in info.value.errors
