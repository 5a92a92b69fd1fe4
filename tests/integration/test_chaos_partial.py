"""Issue 16, fault 4: the upstream answers partial success (rejected_spans > 0) to real SDK traffic.

The sidecar counts the rejected spans (sidecar_dropped_items_total{reason="upstream_rejected"}),
keeps each partially accepted request as one dead letter standing for its rejected spans, and never
sends it again: the Collector receives every request once. Replay through the CLI skips these dead
letters and says why; --include-partial replays them (the Collector then receives them a second time).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.admin.v1 import admin_pb2_grpc as pb_grpc
from tests.fakes.collector import FakeCollector, ReceivedRequest
from tests.fakes.storage import write_old_dead_letter_file
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually
from tests.sdk_app import RecordedTraffic
from tests.sidecar_process import ROOT, free_port

EXPORTER = "otlp_grpc"
PARTIAL_CALLS = 6
REJECTED = 5
MESSAGE = "5 spans rejected: attribute value too long"


def span_ids(request: ReceivedRequest) -> list[bytes]:
    return [span.span_id for rs in request.message.resource_spans for ss in rs.scope_spans for span in ss.spans]


@contextlib.contextmanager
def admin_stub(port: int) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.AdminStub(channel)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SIDECAR_ADMIN_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def with_admin(port: int, storage: Path | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["extensions"]["admin"] = {"endpoint": f"127.0.0.1:{port}"}
        config["service"]["extensions"].append("admin")
        if storage is not None:
            config["extensions"]["file_storage"]["directory"] = str(storage)
    return edit


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
def test_partial_success_is_counted_dead_lettered_once_per_request_and_never_retried(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, monkeypatch: pytest.MonkeyPatch,
        exporter: str) -> None:
    port = free_port()
    target = upstream.http_endpoint if exporter == "otlp_http" else upstream.grpc_endpoint
    sidecar = sidecar_factory(target, exporter, storage=True, config_edit=with_admin(port))
    upstream.partial_success_next(PARTIAL_CALLS, rejected=REJECTED, message=MESSAGE, signal="traces",
                                  data_only=True)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    sdk = RecordedTraffic("partial")
    try:
        for _ in range(PARTIAL_CALLS + 4):  # one SDK batch per flush: more requests than partial answers
            sdk.send(40)
            assert sdk.flush()
        assert not sdk.recorder.failed and len(sdk.recorder.acknowledged) == 40 * (PARTIAL_CALLS + 4)
        assert upstream.wait_for(lambda f: sdk.recorder.acknowledged <= f.span_ids(), timeout=30)

        partial = [r for r in upstream.data_attempts("traces") if r.fault == "partial"]
        assert len(partial) == PARTIAL_CALLS
        rejected = sum(min(r.rejected, r.item_count) for r in partial)
        assert rejected == PARTIAL_CALLS * REJECTED
        # Never retried: the Collector received every span exactly once.
        received = Counter(span_id for r in upstream.data_attempts("traces") for span_id in span_ids(r))
        assert set(received) == sdk.recorder.acknowledged and set(received.values()) == {1}

        assert eventually(lambda: sidecar.metric_value("sidecar_dead_letters_total", exporter=exporter,
                                                       category="processing") == PARTIAL_CALLS, 10)
        assert sidecar.metric_value("sidecar_dropped_items_total", signal="traces",
                                    reason="upstream_rejected") == rejected
        assert sidecar.metric_value("sidecar_dropped_items_total", reason="dead_letter_evicted") == 0

        with admin_stub(port) as admin:
            listed = admin.ListDeadLetters(pb.ListDeadLettersRequest(exporter=exporter), timeout=10)
            assert listed.total == PARTIAL_CALLS  # one per partially accepted request
            letters = list(listed.dead_letters)
            assert all(dl.partial_success and dl.error_type == "partial_success" and dl.message == MESSAGE
                       for dl in letters)
            assert sum(dl.rejected_items for dl in letters) == rejected
            # Each keeps its whole request (the accepted spans too): the same span counts the Collector saw.
            assert sorted(dl.items for dl in letters) == sorted(r.item_count for r in partial)

        table = cli("deadletters", "list", "--endpoint", f"127.0.0.1:{port}")
        assert table.returncode == 0, table.stderr
        assert table.stdout.count(f"{REJECTED} (partial)") == PARTIAL_CALLS, table.stdout
        assert "replay` skips it unless --include-partial" in table.stdout

        # Replay skips them by default, and says so.
        attempts_before = len(upstream.data_attempts("traces"))
        skipped = cli("deadletters", "replay", "--endpoint", f"127.0.0.1:{port}")
        assert skipped.returncode == 0, skipped.stderr
        assert skipped.stdout.startswith("replayed 0 dead letters (0 items); 0 not replayed"), skipped.stdout
        assert (f"skipped {PARTIAL_CALLS} partial successes ({rejected} rejected items): partial successes: the "
                "upstream already accepted their other items") in skipped.stdout, skipped.stdout
        assert "--include-partial" in skipped.stdout
        with admin_stub(port) as admin:
            assert admin.ListDeadLetters(pb.ListDeadLettersRequest(), timeout=10).total == PARTIAL_CALLS

        # Asked to, it replays them: the Collector gets those requests a second time (the accepted spans too).
        included = cli("deadletters", "replay", "--endpoint", f"127.0.0.1:{port}", "--include-partial", "--json")
        assert included.returncode == 0, included.stderr
        answer = json.loads(included.stdout)
        assert (answer["replayed"], answer["skipped_partial"], answer["remaining"]) == (PARTIAL_CALLS, 0, 0)
        assert answer["replayed_items"] == sum(r.item_count for r in partial)
        twice = {span_id for r in partial for span_id in span_ids(r)}
        assert upstream.wait_for(lambda f: len(f.data_attempts("traces")) >= attempts_before + PARTIAL_CALLS, 20)
        received = Counter(span_id for r in upstream.data_attempts("traces") for span_id in span_ids(r))
        assert {span_id for span_id, n in received.items() if n == 2} == twice
        with admin_stub(port) as admin:
            assert admin.ListDeadLetters(pb.ListDeadLettersRequest(), timeout=10).total == 0
    finally:
        sdk.shutdown()



def test_a_dead_letter_file_of_an_older_sidecar_opens_lists_and_replays(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, tmp_path: Path) -> None:
    """A dead-letter file written before `rejected_items` existed: the sidecar adds the column at start-up,
    lists the old dead letter as a whole failed request, and replays it by default."""
    storage = tmp_path / "old-storage"
    storage.mkdir()
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for n in range(3):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"old {n}")
    write_old_dead_letter_file(storage / f"{EXPORTER}.deadletter.sqlite", request.SerializeToString(), 3)
    port = free_port()
    sidecar_factory(upstream.grpc_endpoint, storage=True, config_edit=with_admin(port, storage))
    with admin_stub(port) as admin:
        (old,) = admin.ListDeadLetters(pb.ListDeadLettersRequest(), timeout=10).dead_letters
        assert (old.items, old.rejected_items, old.partial_success, old.message) == (3, 0, False, "old one")
        replayed = admin.ReplayDeadLetters(pb.ReplayDeadLettersRequest(), timeout=10)
        assert (replayed.replayed, replayed.replayed_items, replayed.skipped_partial) == (1, 3, 0)
    assert upstream.wait_for(lambda f: {s.name for s in f.spans()} >= {"old 0", "old 1", "old 2"}, timeout=20)
