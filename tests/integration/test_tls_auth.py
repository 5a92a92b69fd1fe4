"""Issue 9: TLS and mTLS on both receivers and both exporters, bearer-token auth, and bad TLS files.

Certificates are generated here with `cryptography`. The clients are the real OpenTelemetry SDK
exporters, configured only through their standard environment variables
(`OTEL_EXPORTER_OTLP_ENDPOINT=https://...`, `OTEL_EXPORTER_OTLP_CERTIFICATE`,
`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`, `OTEL_EXPORTER_OTLP_HEADERS`);
the upstream is the fake Collector in its TLS mode.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.config import ConfigError, load_config_text
from sidecar.tls import check_config
from tests.fakes.collector import FakeCollector, FakeTLS
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually
from tests.sdk_app import SdkApp
from tests.sidecar_process import ROOT, SidecarPorts, SidecarProcess, base_config

TOKEN = "s3cr3t-t0ken"
UTC = datetime.UTC

# ================================================================================ certificates


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the clients and the sidecar trust
    server: Issued  # 127.0.0.1 / localhost, signed by `ca`
    client: Issued  # clientAuth, signed by `ca`
    other_ca: Path  # a CA nobody trusts
    other_client: Issued  # clientAuth, signed by `other_ca`
    other_server: Issued  # 127.0.0.1, signed by `other_ca`
    named_server: Issued  # only DNS:collector.internal, signed by `ca`
    expired: Issued  # 127.0.0.1, signed by `ca`, notAfter in the past
    expired_not_after: datetime.datetime


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(directory: Path, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    now = datetime.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key, _write_cert(cert, directory / f"{label}-ca.pem")


def _issue(directory: Path, label: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path], *,
           server: bool, names: list[str] | None = None, not_before: datetime.datetime | None = None,
           not_after: datetime.datetime | None = None) -> Issued:
    now = datetime.datetime.now(UTC)
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(label)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - datetime.timedelta(hours=1))
               .not_valid_after(not_after or now + datetime.timedelta(days=1))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        sans: list[x509.GeneralName] = []
        for name in names or ["127.0.0.1", "localhost"]:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(_write_cert(cert, directory / f"{label}.pem"), _write_key(key, directory / f"{label}-key.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "test")
    other = _ca(directory, "other")
    now = datetime.datetime.now(UTC)
    expired_not_after = (now - datetime.timedelta(days=3)).replace(microsecond=0)
    return Pki(
        ca=ca[2], server=_issue(directory, "server", ca, server=True),
        client=_issue(directory, "client", ca, server=False),
        other_ca=other[2], other_client=_issue(directory, "other-client", other, server=False),
        other_server=_issue(directory, "other-server", other, server=True),
        named_server=_issue(directory, "named-server", ca, server=True, names=["collector.internal"]),
        expired=_issue(directory, "expired", ca, server=True, not_before=now - datetime.timedelta(days=30),
                       not_after=expired_not_after),
        expired_not_after=expired_not_after,
    )


# ================================================================================ SDK helpers


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the SDK exporters at an endpoint through the standard OTEL_EXPORTER_OTLP_* variables only."""

    def configure(endpoint: str, *, ca: Path | None = None, client: Issued | None = None,
                  headers: str | None = None, timeout: float = 3) -> None:
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify` (psf/requests#3829),
        # so with either set the SDK's HTTP exporter silently ignores OTEL_EXPORTER_OTLP_CERTIFICATE.
        for name in ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                     "OTEL_EXPORTER_OTLP_CLIENT_KEY", "OTEL_EXPORTER_OTLP_HEADERS", "REQUESTS_CA_BUNDLE",
                     "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
        if ca is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca))
        if client is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(client.cert))
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(client.key))
        if headers is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers)

    return configure


def sdk_export(protocol: str, name: str) -> tuple[SpanExportResult, int]:
    """One span through a fresh SDK span exporter (configured from the environment); its result and span id."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tls-test").start_as_current_span(name) as span:
        span_id = span.get_span_context().span_id
    exporter = OTLPSpanExporter()
    try:
        return exporter.export(memory.get_finished_spans()), span_id
    finally:
        exporter.shutdown()
        provider.shutdown()


def delivered(upstream: FakeCollector, span_id: int, timeout: float = 10.0) -> bool:
    return upstream.wait_for(lambda f: span_id.to_bytes(8, "big") in f.span_ids(), timeout)


def receiver_tls(pki: Pki, *, mtls: bool, server: Issued | None = None) -> dict[str, str]:
    chosen = server or pki.server
    tls = {"cert_file": str(chosen.cert), "key_file": str(chosen.key)}
    if mtls:
        tls["client_ca_file"] = str(pki.ca)
    return tls


def with_receiver_tls(pki: Pki, *, mtls: bool = False,
                      token_env: str | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        receiver = config["receivers"]["otlp"]
        for protocol in ("grpc", "http"):
            receiver["protocols"][protocol]["tls"] = receiver_tls(pki, mtls=mtls)
        if token_env is not None:
            receiver["auth"] = {"bearer_token": f"${{env:{token_env}}}"}

    return edit


def https(sidecar: SidecarProcess, protocol: str) -> str:
    return f"https://127.0.0.1:{sidecar.ports.grpc if protocol == 'grpc' else sidecar.ports.http}"


# ================================================================================ receivers: TLS and mTLS


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_sends_all_signals_over_tls(protocol: str, pki: Pki, upstream: FakeCollector,
                                        sidecar_factory: SidecarFactory, sdk_env: Callable[..., None]) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_receiver_tls(pki))
    sdk_env(https(sidecar, protocol), ca=pki.ca)
    app = SdkApp(protocol)  # type: ignore[arg-type]
    sent = app.send_traces(20, error_every=5)
    app.record_metrics(3)
    app.emit_logs(5)
    assert app.flush()
    app.shutdown()
    assert upstream.wait_for(lambda f: len(f.span_ids()) >= 20 and len(f.log_records()) >= 5
                             and f.metric_point_count() >= 1, timeout=20), sidecar.logs()[-2000:]
    assert {s.to_bytes(8, "big") for s in sent} <= upstream.span_ids()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_client_that_does_not_trust_the_receiver_certificate_cannot_send(
        protocol: str, pki: Pki, upstream: FakeCollector, sidecar_factory: SidecarFactory,
        sdk_env: Callable[..., None]) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_receiver_tls(pki))
    sdk_env(https(sidecar, protocol), ca=pki.other_ca, timeout=2)
    result, span_id = sdk_export(protocol, "untrusted")
    assert result is SpanExportResult.FAILURE
    sdk_env(https(sidecar, protocol), ca=pki.ca)
    result, good_id = sdk_export(protocol, "trusted")
    assert result is SpanExportResult.SUCCESS
    assert delivered(upstream, good_id)
    assert span_id.to_bytes(8, "big") not in upstream.span_ids()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mtls_receivers_require_a_client_certificate_from_the_configured_ca(
        protocol: str, pki: Pki, upstream: FakeCollector, sidecar_factory: SidecarFactory,
        sdk_env: Callable[..., None]) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_receiver_tls(pki, mtls=True))
    endpoint = https(sidecar, protocol)
    refused = []
    sdk_env(endpoint, ca=pki.ca, timeout=2)  # no client certificate
    result, span_id = sdk_export(protocol, "no client certificate")
    assert result is SpanExportResult.FAILURE
    refused.append(span_id)
    sdk_env(endpoint, ca=pki.ca, client=pki.other_client, timeout=2)  # a certificate from a CA not trusted
    result, span_id = sdk_export(protocol, "client certificate from another CA")
    assert result is SpanExportResult.FAILURE
    refused.append(span_id)
    sdk_env(endpoint, ca=pki.ca, client=pki.client)
    result, span_id = sdk_export(protocol, "good client certificate")
    assert result is SpanExportResult.SUCCESS
    assert delivered(upstream, span_id)
    assert not {s.to_bytes(8, "big") for s in refused} & upstream.span_ids()


def test_mtls_handshake_is_refused_at_the_tls_layer(pki: Pki, upstream: FakeCollector,
                                                    sidecar_factory: SidecarFactory) -> None:
    """Without a client certificate the HTTP receiver never reaches a handler (no HTTP status at all)."""
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_receiver_tls(pki, mtls=True))
    context = ssl.create_default_context(cafile=str(pki.ca))
    request = urllib.request.Request(f"{https(sidecar, 'http')}/v1/traces", data=b"", method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(request, timeout=5, context=context).read()
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        assert response.status == 200


# ================================================================================ receivers: bearer token


def _raw_answers(sidecar: SidecarProcess, authorization: str | None, pki: Pki | None = None) -> tuple[int, Any]:
    """(HTTP status, gRPC code) for an empty Export with this Authorization header (over mTLS with `pki`)."""
    headers = {"Content-Type": "application/x-protobuf"}
    if authorization is not None:
        headers["Authorization"] = authorization
    scheme = "https" if pki is not None else "http"
    context = None
    if pki is not None:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{sidecar.ports.http}/v1/traces", method="POST",
                                     data=trace_service_pb2.ExportTraceServiceRequest().SerializeToString(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read()
        assert exc.headers["Content-Type"] == "application/x-protobuf"
        assert status_pb2.Status.FromString(body).code == code_pb2.UNAUTHENTICATED
    if pki is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(),
                                                   private_key=pki.client.key.read_bytes(),
                                                   certificate_chain=pki.client.cert.read_bytes())
        channel = grpc.secure_channel(f"127.0.0.1:{sidecar.ports.grpc}", credentials)
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
    metadata = (("authorization", authorization),) if authorization is not None else None
    try:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                            request_serializer=None, response_deserializer=None)(b"", timeout=5, metadata=metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
    finally:
        channel.close()
    return status, code


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bearer_token_auth_with_the_sdk(protocol: str, upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                        sdk_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TEST_TOKEN", TOKEN)  # the sidecar process reads it through ${env:...}

    def edit(config: dict[str, Any]) -> None:
        config["receivers"]["otlp"]["auth"] = {"bearer_token": "${env:SIDECAR_TEST_TOKEN}"}

    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit)
    endpoint = sidecar.grpc_endpoint if protocol == "grpc" else sidecar.http_endpoint
    refused = []
    for headers in (None, "authorization=Bearer%20wrong-token", f"authorization=Bearer%20{TOKEN}x",
                    f"authorization={TOKEN}", f"authorization=Basic%20{TOKEN}", "x-api-key=" + TOKEN):
        sdk_env(endpoint, headers=headers, timeout=2)
        result, span_id = sdk_export(protocol, f"refused {headers}")
        assert result is SpanExportResult.FAILURE, headers
        refused.append(span_id)
    sdk_env(endpoint, headers=f"authorization=Bearer%20{TOKEN}")
    result, span_id = sdk_export(protocol, "authorized")
    assert result is SpanExportResult.SUCCESS
    assert delivered(upstream, span_id)
    assert not {s.to_bytes(8, "big") for s in refused} & upstream.span_ids()
    # The exact answers: 401 with a google.rpc.Status, UNAUTHENTICATED.
    for authorization in (None, "Bearer wrong", f"bearer{TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN[:-1]}", ""):
        assert _raw_answers(sidecar, authorization) == (401, grpc.StatusCode.UNAUTHENTICATED), authorization
    assert _raw_answers(sidecar, f"Bearer {TOKEN}") == (200, grpc.StatusCode.OK)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mtls_and_bearer_token_end_to_end_through_tls_upstream(
        protocol: str, pki: Pki, sidecar_factory: SidecarFactory, sdk_env: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SDK --mTLS + token--> sidecar --mTLS--> Collector: every hop authenticated, everything delivered."""
    monkeypatch.setenv("SIDECAR_TEST_TOKEN", TOKEN)
    exporter = "otlp_grpc" if protocol == "grpc" else "otlp_http"
    with FakeCollector(tls=FakeTLS(str(pki.server.cert), str(pki.server.key), str(pki.ca))) as upstream:
        target = f"https://{upstream.grpc_endpoint}" if exporter == "otlp_grpc" else upstream.http_endpoint
        edit = with_receiver_tls(pki, mtls=True, token_env="SIDECAR_TEST_TOKEN")
        sidecar = sidecar_factory(target, exporter, config_edit=edit,
                                  tls={"ca_file": str(pki.ca), "cert_file": str(pki.client.cert),
                                       "key_file": str(pki.client.key), "insecure": False})
        sdk_env(https(sidecar, protocol), ca=pki.ca, client=pki.client, headers=f"authorization=Bearer%20{TOKEN}")
        app = SdkApp(protocol)  # type: ignore[arg-type]
        sent = app.send_traces(30, error_every=3)
        app.emit_logs(10, error_every=2)
        assert app.flush()
        app.shutdown()
        assert upstream.wait_for(lambda f: len(f.span_ids()) >= 30 and len(f.log_records()) >= 10, timeout=20), \
            sidecar.logs()[-3000:]
        assert {s.to_bytes(8, "big") for s in sent} <= upstream.span_ids()
        assert _raw_answers(sidecar, None, pki) == (401, grpc.StatusCode.UNAUTHENTICATED)
        assert _raw_answers(sidecar, f"Bearer {TOKEN}", pki) == (200, grpc.StatusCode.OK)


# ================================================================================ exporters: TLS and mTLS upstream


def _target(upstream: FakeCollector, exporter: str) -> str:
    return f"https://{upstream.grpc_endpoint}" if exporter == "otlp_grpc" else upstream.http_endpoint


def _send(sidecar: SidecarProcess, n: int = 1) -> list[bytes]:
    """n spans over plain OTLP/HTTP to the sidecar; their span ids."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add()
    ids = []
    for _ in range(n):
        span_id = int(time.monotonic_ns() % 2**63).to_bytes(8, "big")
        spans.spans.add(trace_id=b"\x07" * 16, span_id=span_id, name="through tls")
        ids.append(span_id)
    http_request = urllib.request.Request(f"{sidecar.http_endpoint}/v1/traces", data=request.SerializeToString(),
                                          headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(http_request, timeout=10) as response:
        assert response.status == 200
    return ids


def _tls_failures(sidecar: SidecarProcess) -> float:
    return sidecar.metric_value("sidecar_exporter_send_failed_spans_total", error_type="tls_handshake")


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
def test_exporter_verifies_the_upstream_with_its_ca_file(exporter: str, pki: Pki,
                                                         sidecar_factory: SidecarFactory) -> None:
    with FakeCollector(tls=FakeTLS(str(pki.server.cert), str(pki.server.key))) as upstream:
        sidecar = sidecar_factory(_target(upstream, exporter), exporter,
                                  tls={"ca_file": str(pki.ca), "insecure": False})
        ids = _send(sidecar, 5)
        assert upstream.wait_for(lambda f: set(ids) <= f.span_ids(), timeout=15), sidecar.logs()[-2000:]


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
def test_exporter_mtls_to_an_upstream_that_requires_client_certificates(exporter: str, pki: Pki,
                                                                        sidecar_factory: SidecarFactory) -> None:
    with FakeCollector(tls=FakeTLS(str(pki.server.cert), str(pki.server.key), str(pki.ca))) as upstream:
        with_cert = sidecar_factory(_target(upstream, exporter), exporter,
                                    tls={"ca_file": str(pki.ca), "cert_file": str(pki.client.cert),
                                         "key_file": str(pki.client.key), "insecure": False})
        ids = _send(with_cert, 3)
        assert upstream.wait_for(lambda f: set(ids) <= f.span_ids(), timeout=15), with_cert.logs()[-2000:]
        without = sidecar_factory(_target(upstream, exporter), exporter, tls={"ca_file": str(pki.ca),
                                                                               "insecure": False})
        refused = _send(without, 3)
        # With TLS 1.3 the server checks the client's certificate after the client considers the handshake
        # done, so the client only sees the connection closed: a transport failure, retried, data kept queued.
        assert eventually(lambda: without.metric_value("sidecar_exporter_send_failed_spans_total",
                                                  category="transport") >= 3, timeout=15), (
            without.metrics_text()[-3000:])
        assert not set(refused) & upstream.span_ids()
        assert without.metric_value("sidecar_dead_letters_total") == 0


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
@pytest.mark.parametrize("tls", [{"insecure": False}, {"insecure": True}, {"ca_file": "OTHER"}],
                         ids=["system-roots", "insecure-flag", "other-ca"])
def test_exporter_refuses_an_untrusted_upstream(exporter: str, tls: dict[str, Any], pki: Pki,
                                                sidecar_factory: SidecarFactory) -> None:
    """An https:// upstream is always verified; `insecure: true` does not turn that off (as in the Collector)."""
    tls = {k: (str(pki.other_ca) if v == "OTHER" else v) for k, v in tls.items()}
    with FakeCollector(tls=FakeTLS(str(pki.server.cert), str(pki.server.key))) as upstream:
        sidecar = sidecar_factory(_target(upstream, exporter), exporter, tls=tls)
        refused = _send(sidecar, 2)
        assert eventually(lambda: _tls_failures(sidecar) >= 2, timeout=15), sidecar.metrics_text()[-3000:]
        assert not set(refused) & upstream.span_ids()
        assert sidecar.metric_value("sidecar_dead_letters_total", category="configuration") >= 1


def test_http_exporter_insecure_skip_verify(pki: Pki, sidecar_factory: SidecarFactory) -> None:
    with FakeCollector(tls=FakeTLS(str(pki.other_server.cert), str(pki.other_server.key))) as upstream:
        sidecar = sidecar_factory(upstream.http_endpoint, "otlp_http", tls={"insecure_skip_verify": True})
        ids = _send(sidecar, 2)
        assert upstream.wait_for(lambda f: set(ids) <= f.span_ids(), timeout=15), sidecar.logs()[-2000:]


def test_grpc_exporter_server_name_override(pki: Pki, sidecar_factory: SidecarFactory) -> None:
    """The upstream's certificate names only collector.internal; the sidecar dials 127.0.0.1."""
    with FakeCollector(tls=FakeTLS(str(pki.named_server.cert), str(pki.named_server.key))) as upstream:
        sidecar = sidecar_factory(_target(upstream, "otlp_grpc"), "otlp_grpc",
                                  tls={"ca_file": str(pki.ca), "server_name_override": "collector.internal"})
        ids = _send(sidecar, 2)
        assert upstream.wait_for(lambda f: set(ids) <= f.span_ids(), timeout=15), sidecar.logs()[-2000:]
        wrong = sidecar_factory(_target(upstream, "otlp_grpc"), "otlp_grpc", tls={"ca_file": str(pki.ca)})
        refused = _send(wrong, 1)
        assert eventually(lambda: _tls_failures(wrong) >= 1, timeout=15), wrong.metrics_text()[-3000:]
        assert not set(refused) & upstream.span_ids()


# ================================================================================ bad TLS files


def _config_text(upstream: str, edit: Callable[[dict[str, Any]], None]) -> str:
    config = base_config(upstream, SidecarPorts())
    edit(config)
    return yaml.safe_dump(config)


def test_missing_tls_files_are_configuration_errors_naming_each_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    def edit(config: dict[str, Any]) -> None:
        protocols = config["receivers"]["otlp"]["protocols"]
        protocols["grpc"]["tls"] = {"cert_file": f"{missing}/grpc.pem", "key_file": f"{missing}/grpc-key.pem"}
        protocols["http"]["tls"] = {"cert_file": f"{missing}/http.pem", "key_file": f"{missing}/http-key.pem",
                                    "client_ca_file": f"{missing}/ca.pem"}
        config["exporters"]["otlp_grpc"]["tls"] = {"ca_file": f"{missing}/up-ca.pem",
                                                   "cert_file": f"{missing}/c.pem", "key_file": f"{missing}/k.pem"}

    text = _config_text("127.0.0.1:4317", edit)
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert set(info.value.errors) == {
        f"receivers.otlp.protocols.grpc.tls.cert_file: file not found: {missing}/grpc.pem",
        f"receivers.otlp.protocols.grpc.tls.key_file: file not found: {missing}/grpc-key.pem",
        f"receivers.otlp.protocols.http.tls.cert_file: file not found: {missing}/http.pem",
        f"receivers.otlp.protocols.http.tls.key_file: file not found: {missing}/http-key.pem",
        f"receivers.otlp.protocols.http.tls.client_ca_file: file not found: {missing}/ca.pem",
        f"exporters.otlp_grpc.tls.ca_file: file not found: {missing}/up-ca.pem",
        f"exporters.otlp_grpc.tls.cert_file: file not found: {missing}/c.pem",
        f"exporters.otlp_grpc.tls.key_file: file not found: {missing}/k.pem",
    }
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "sidecar", "validate", "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert f"receivers.otlp.protocols.grpc.tls.cert_file: file not found: {missing}/grpc.pem" in result.stderr


def _run_expecting_refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "sidecar", "run", "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("where", ["receiver-grpc", "receiver-http", "exporter"])
def test_an_expired_certificate_refuses_start_up_naming_file_and_not_after(where: str, pki: Pki,
                                                                          tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        expired = {"cert_file": str(pki.expired.cert), "key_file": str(pki.expired.key)}
        if where == "exporter":
            config["exporters"]["otlp_grpc"]["tls"] = {**expired, "ca_file": str(pki.ca)}
        else:
            config["receivers"]["otlp"]["protocols"][where.split("-")[1]]["tls"] = expired

    text = _config_text("127.0.0.1:4317", edit)
    load_config_text(text)  # the file exists: `validate` is happy, start-up is not
    stderr = _run_expecting_refusal(tmp_path, text)
    when = pki.expired_not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    path = "exporters.otlp_grpc.tls" if where == "exporter" else f"receivers.otlp.protocols.{where[9:]}.tls"
    assert f"otlp-sidecar: cannot start: {path}.cert_file: certificate {pki.expired.cert} has expired: " \
           f"notAfter {when}" in stderr, stderr


def test_a_key_that_is_not_the_certificates_and_non_pem_files_refuse_start_up(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")

    def edit(config: dict[str, Any]) -> None:
        protocols = config["receivers"]["otlp"]["protocols"]
        protocols["grpc"]["tls"] = {"cert_file": str(pki.server.cert), "key_file": str(pki.client.key)}
        protocols["http"]["tls"] = {"cert_file": str(garbage), "key_file": str(pki.server.key),
                                    "client_ca_file": str(garbage)}
        config["exporters"]["otlp_grpc"]["tls"] = {"ca_file": str(pki.server.key)}

    stderr = _run_expecting_refusal(tmp_path, _config_text("127.0.0.1:4317", edit))
    assert f"receivers.otlp.protocols.grpc.tls: key_file {pki.client.key} cannot be used with cert_file " \
           f"{pki.server.cert}" in stderr
    assert f"receivers.otlp.protocols.http.tls.cert_file: cannot read a PEM certificate from {garbage}" in stderr
    assert f"receivers.otlp.protocols.http.tls.client_ca_file: cannot read PEM CA certificates from {garbage}" \
        in stderr
    assert f"exporters.otlp_grpc.tls.ca_file: cannot read PEM CA certificates from {pki.server.key}" in stderr


def test_check_config_accepts_good_files_and_reports_each_problem(pki: Pki, tmp_path: Path) -> None:
    def good(config: dict[str, Any]) -> None:
        config["receivers"]["otlp"]["protocols"]["grpc"]["tls"] = receiver_tls(pki, mtls=True)
        config["exporters"]["otlp_grpc"]["tls"] = {"ca_file": str(pki.ca), "cert_file": str(pki.client.cert),
                                                   "key_file": str(pki.client.key)}

    config = load_config_text(_config_text("127.0.0.1:4317", good))
    assert check_config(config) == []
    # The same files a year from now: both certificates have expired.
    later = time.time() + 365 * 86400
    errors = check_config(config, now=later)
    assert [e.split(":")[0] for e in errors] == ["receivers.otlp.protocols.grpc.tls.cert_file",
                                                 "exporters.otlp_grpc.tls.cert_file"]
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pki.client.key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))

    def encrypted_key(config: dict[str, Any]) -> None:
        config["exporters"]["otlp_grpc"]["tls"] = {"cert_file": str(pki.client.cert), "key_file": str(encrypted)}

    errors = check_config(load_config_text(_config_text("127.0.0.1:4317", encrypted_key)))
    assert errors == [f"exporters.otlp_grpc.tls.key_file: {encrypted}: encrypted private keys are not supported "
                      "(the gRPC runtime cannot use them)"]
