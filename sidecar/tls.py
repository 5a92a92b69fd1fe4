"""Start-up checks of the TLS files a configuration names (receivers and exporters).

gRPC and OpenSSL read certificate files lazily or report problems only as failing handshakes, so an
expired certificate, a key that does not belong to its certificate, or a file that is not PEM would
otherwise surface as every client being refused, or every export failing as `tls_handshake`. The
sidecar refuses to start instead, with the dotted config path, the file and, for an expired
certificate, its notAfter.

`validate` only checks that the files exist (a configuration can be validated on a machine without the
secrets); these checks run when the sidecar starts.

Decision: the certificate is decoded with the standard library's `ssl._ssl._test_decode_cert` (private,
but present in CPython since 3.x and used by its own test-suite); where it is missing only the expiry
check is skipped. This keeps `cryptography` a test-only dependency. Key pairs and CA bundles are
loaded with the public `ssl.SSLContext` API.
"""

from __future__ import annotations

import datetime
import ssl
import time
from typing import Any

from sidecar.config.schema import Config


class EncryptedKeyError(ValueError):
    """A TLS private key is encrypted; the sidecar reads only unencrypted keys."""


def _no_password() -> str:
    raise EncryptedKeyError("encrypted private keys are not supported (the gRPC runtime cannot use them)")


def decode_certificate(path: str) -> dict[str, Any] | None:
    """The first certificate of a PEM file as the ssl module describes peers; None if undecodable here."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    result: dict[str, Any] = decode(path)
    return result


def check_certificate(path: str, file: str, now: float) -> list[str]:
    try:
        info = decode_certificate(file)
    except (ssl.SSLError, OSError) as exc:
        return [f"{path}: cannot read a PEM certificate from {file}: {_reason(exc)}"]
    if info is None or "notAfter" not in info:
        return []
    not_after = ssl.cert_time_to_seconds(info["notAfter"])
    if not_after < now:
        when = datetime.datetime.fromtimestamp(not_after, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return [f"{path}: certificate {file} has expired: notAfter {when}"]
    return []


def check_key_pair(path: str, cert_file: str, key_file: str) -> list[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except EncryptedKeyError as exc:
        return [f"{path}.key_file: {key_file}: {exc}"]
    except (ssl.SSLError, OSError) as exc:
        return [f"{path}: key_file {key_file} cannot be used with cert_file {cert_file} "
                f"(not a PEM private key, or not the certificate's key): {_reason(exc)}"]
    return []


def check_ca_file(path: str, file: str) -> list[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=file)
    except (ssl.SSLError, OSError) as exc:
        return [f"{path}: cannot read PEM CA certificates from {file}: {_reason(exc)}"]
    return []


def check_files(path: str, cert_file: str | None, key_file: str | None, ca_key: str, ca_file: str | None,
                now: float) -> list[str]:
    errors: list[str] = []
    if cert_file:
        errors += check_certificate(f"{path}.cert_file", cert_file, now)
        if key_file and not errors:
            errors += check_key_pair(path, cert_file, key_file)
    if ca_file:
        errors += check_ca_file(f"{path}.{ca_key}", ca_file)
    return errors


def check_config(config: Config, now: float | None = None) -> list[str]:
    """Every problem with the TLS files of the receivers and exporters, each prefixed by its config path."""
    now = time.time() if now is None else now
    errors: list[str] = []
    for name, receiver in config.receivers.items():
        for protocol, settings in (("grpc", receiver.protocols.grpc), ("http", receiver.protocols.http)):
            if settings is not None and settings.tls is not None:
                tls = settings.tls
                errors += check_files(f"receivers.{name}.protocols.{protocol}.tls", tls.cert_file, tls.key_file,
                                      "client_ca_file", tls.client_ca_file, now)
    for name, exporter in config.exporters.items():
        client = exporter.tls
        errors += check_files(f"exporters.{name}.tls", client.cert_file, client.key_file, "ca_file", client.ca_file,
                              now)
    return errors


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # set by OpenSSL errors, not by every SSLError
    if isinstance(exc, ssl.SSLError) and reason:
        return f"{reason} ({getattr(exc, 'library', None) or 'ssl'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__
