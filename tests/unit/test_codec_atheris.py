"""Coverage-guided fuzzing of the receivers' codec with atheris (libFuzzer), outside the default test run.

`make fuzz` runs it when atheris is installed (`pip install atheris`); by hand:

    ATHERIS_RUNS=200000 .venv/bin/python -m pytest -q tests/unit/test_codec_atheris.py
    .venv/bin/python tests/unit/test_codec_atheris.py -runs=200000      # libFuzzer flags work here

Every input must end in a message or a precise BadRequest / PayloadTooLarge; anything else is a crash
that libFuzzer reports with the input that caused it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = os.environ.get("ATHERIS_RUNS")


@pytest.mark.skipif(not RUNS, reason="set ATHERIS_RUNS (make fuzz) to run the atheris fuzzer")
def test_atheris_codec(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    root = Path(__file__).resolve().parents[2]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(_seeds()):
        (corpus / f"seed{i}").write_bytes(seed)
    result = subprocess.run([sys.executable, __file__, f"-runs={RUNS}", f"-artifact_prefix={tmp_path}/",
                             "-max_len=4096", str(corpus)],
                            capture_output=True, text=True, cwd=root, timeout=3600,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr, result.stderr[-2000:]


MODES = ("protobuf", "json", "gzip", "deflate", "gzip+json")


def _seeds() -> list[bytes]:
    """Valid inputs for each mode (first byte: mode, second: signal) for libFuzzer to mutate from."""
    import gzip
    import zlib

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    from tests.fakes.collector import message_to_otlp_json

    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="seed", kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1)
    span.attributes.add(key="http.response.status_code").value.int_value = 503
    span.events.add(name="exception").attributes.add(key="exception.type").value.string_value = "TimeoutError"
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8)
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    proto, doc = request.SerializeToString(), message_to_otlp_json(request)
    return [bytes([0, 0]) + proto, bytes([1, 0]) + doc, bytes([2, 0]) + gzip.compress(proto),
            bytes([3, 0]) + zlib.compress(proto), bytes([4, 0]) + gzip.compress(doc),
            bytes([1, 1]) + b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": '
            b'[{"asInt": "1", "exemplars": [{"traceId": "0102030405060708090a0b0c0d0e0f10"}]}]}}]}]}]}',
            bytes([1, 2]) + b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "0102030405060708"}]}]}]}']


def _fuzz() -> None:  # pragma: no cover - runs under libFuzzer
    import atheris

    with atheris.instrument_imports():
        from sidecar.core.signals import Signal
        from sidecar.receivers import codec

    signals = list(Signal)
    limit = 1 << 16

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        mode, signal, body = MODES[data[0] % len(MODES)], signals[data[1] % len(signals)], data[2:]
        try:
            if mode == "protobuf":
                codec.decode_protobuf(signal, body)
            elif mode == "json":
                codec.decode_json(signal, body)
            elif mode in ("gzip", "deflate"):
                assert len(codec.inflate(body, mode, limit)) <= limit
            else:
                codec.decode_request(signal, codec.inflate(body, "gzip", limit), codec.JSON)
        except (codec.BadRequest, codec.PayloadTooLarge):
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _fuzz()
