"""The `status` / `deadletters` tables, their JSON form, and the CLI's one-line errors."""

from __future__ import annotations

import json

import pytest

from sidecar.__main__ import main
from sidecar.admin import status as render
from sidecar.admin.v1 import admin_pb2 as pb
from tests.fakes.admin_status import NOW
from tests.fakes.admin_status import recorded_status as _status
from tests.sidecar_process import free_port


def _columns(header: str, names: list[str]) -> list[int]:
    return [header.index(name) for name in names]


def test_table_aligns_columns() -> None:
    lines = render.table(["NAME", "COUNT", "NOTE"], [["a", "1", "x"], ["longer-name", "12345", ""]], right={1})
    assert lines == [
        "NAME         COUNT  NOTE",
        "a                1  x",
        "longer-name  12345",
    ]


@pytest.mark.parametrize(("seconds", "text"), [
    (0.012, "12ms"), (1.25, "1.2s"), (42.4, "42s"), (125, "2m05s"), (3725, "1h02m"), (200_000, "2d07h"),
    (float("nan"), "-"), (-1, "-"),
])
def test_duration(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("nbytes", "text"), [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"),
                                              (3 * 1024 * 1024, "3.0 MiB"), (5 * 1024 ** 4, "5120.0 GiB")])
def test_size(nbytes: int, text: str) -> None:
    assert render.size(nbytes) == text


def test_status_table() -> None:
    text = render.render_status(_status(), NOW)
    lines = text.splitlines()
    assert lines[0] == "sidecar  NOT READY, accepting, up 1h02m"
    assert all(line == line.rstrip() for line in lines)

    header = next(i for i, line in enumerate(lines) if line.startswith("EXPORTER   ") and "QUEUE" in line)
    names = ["EXPORTER", "QUEUE", "HELD", "STORAGE", "DEGRADATION", "DEAD LETTERS", "REACHABLE"]
    positions = _columns(lines[header], names)
    primary, http = lines[header + 1], lines[header + 2]
    cells = ["otlp_grpc/primary", "12/1000 requests", "12 req, 3.0 MiB", "file_storage", "1 spill (breaker_open)",
             "2 (2.0 KiB)", "NO"]
    assert primary.index("1m05s") == lines[header].index("OLDEST")
    assert primary.index("7m30s") == lines[header].index("TIME TO FULL")
    assert [primary.index(cell) for cell in cells] == positions  # every cell starts under its header
    assert http.startswith("otlp_http") and "synchronous" in http and http.endswith("yes")

    header = next(i for i, line in enumerate(lines) if "BREAKER" in line)
    a, b = lines[header + 1], lines[header + 2]
    assert a.index("collector-a:4317") == lines[header].index("ENDPOINT")
    assert "open 12s" in a and "0/4" in a and "2.8" in a and "unhealthy" in a and a.rstrip().endswith("-")
    assert "half-open 250ms" in b and "9/16" in b and "healthy" in b and b.endswith("12ms")

    assert "1m 12.0/min   5m 4.4/min   15m 1.6/min" in text
    assert "(last 15m: 22 export errors, 2 error spans/logs)" in text
    assert "3 outages: 2 recovered (67%), 1 ongoing; mean recovery 4.2s, max 7.0s" in text
    assert ("ANOMALIES  timeout 9.5 ANOMALY (300/min, usually 2.0/min), transport 1.5 (14.0/min, usually 10.0/min), "
            "service checkout 6.0 ANOMALY (900/min, usually 10.0/min)" in text)
    header = lines.index(next(line for line in lines if line.startswith("COUNT")))
    assert lines[header - 1] == "TOP ERROR HOTSPOTS (last 5m)"
    assert lines[header + 1].split() == ["1234", "checkout", "POST", "/pay", "traces", "transport",
                                         "connection_refused", "3.0s", "ago"]
    assert lines[header + 2].endswith("2m05s ago")
    assert lines[header + 1].index("checkout") == lines[header].index("SERVICE")


def test_status_without_errors() -> None:
    status = pb.GetStatusResponse(ready=True, accepting=True)
    status.error_rates.add(window_minutes=1)
    text = render.render_status(status, NOW)
    assert "RECOVERY   no outages" in text
    assert "TOP ERROR HOTSPOTS (last 5m)  none" in text
    assert "ANOMALIES  none" in text


def test_to_plain_keeps_numbers_and_marks_unset_optionals() -> None:
    plain = render.to_plain(_status())
    json.dumps(plain)  # serialisable
    primary = plain["exporters"][0]
    assert primary["queue"]["bytes"] == 3 * 1024 * 1024  # a number, not protobuf JSON's string
    assert primary["endpoints"][0]["ewma_latency_seconds"] is None
    assert primary["endpoints"][1]["ewma_latency_seconds"] == 0.012
    assert plain["exporters"][1]["dead_letters"] == {"count": 0, "bytes": 0, "evicted": 0}
    assert plain["recovery"]["last_recovery_seconds"] is None
    assert plain["hotspots"][0]["count"] == 1234


def test_dead_letter_table() -> None:
    response = pb.ListDeadLettersResponse(total=7)
    response.dead_letters.add(exporter="otlp_grpc", id=4, signal="traces", items=12, bytes=4096,
                              category="serialization", recoverability="permanent", error_type="INVALID_ARGUMENT",
                              message="bad\nspan " + "x" * 200, dead_at=NOW - 61)
    text = render.render_dead_letters(response, NOW, offset=3)
    lines = text.splitlines()
    assert lines[0].split() == ["EXPORTER", "ID", "SIGNAL", "ITEMS", "REJECTED", "SIZE", "CATEGORY",
                                "RECOVERABILITY", "ERROR", "TYPE", "DEAD", "MESSAGE"]
    assert lines[1].split()[3:5] == ["12", "all"]
    assert "INVALID_ARGUMENT" in lines[1] and "1m01s ago" in lines[1] and "bad span xx" in lines[1]
    assert lines[1].endswith("…") and "\n" not in lines[1]
    assert lines[-1] == "(4-4 of 7)"  # no partial success listed: no note about them
    assert render.render_dead_letters(pb.ListDeadLettersResponse(total=7), NOW) == "no dead letters shown (7 held)\n"


def test_dead_letter_table_shows_a_partial_success_and_why_replay_skips_it() -> None:
    response = pb.ListDeadLettersResponse(total=1)
    response.dead_letters.add(exporter="otlp_grpc", id=5, signal="traces", items=40, bytes=4096,
                              category="processing", recoverability="permanent", error_type="partial_success",
                              message="3 spans rejected", dead_at=NOW - 5, rejected_items=3, partial_success=True)
    lines = render.render_dead_letters(response, NOW).splitlines()
    assert lines[1].split()[3:6] == ["40", "3", "(partial)"]
    assert lines[-2] == "(1-1 of 1)"
    assert lines[-1].startswith("partial: a partial success; the upstream accepted the other items, so `replay` "
                                "skips it unless --include-partial")


def test_replay_text_says_how_many_partial_successes_were_skipped_and_why() -> None:
    replay = pb.ReplayDeadLettersResponse(replayed=1, replayed_items=10, skipped_partial=2, skipped_partial_items=7,
                                          skipped_reason="they were accepted in part")
    assert render.render_replay(replay) == (
        "replayed 1 dead letter (10 items); 0 not replayed\n"
        "skipped 2 partial successes (7 rejected items): they were accepted in part (--include-partial)\n")


def test_action_texts() -> None:
    replay = pb.ReplayDeadLettersResponse(replayed=2, replayed_items=30, remaining=1, missing_ids=[9])
    assert render.render_replay(replay) == "replayed 2 dead letters (30 items); 1 not replayed; not found: 9\n"
    reset = pb.ResetBreakerResponse()
    reset.reset.add(exporter="otlp_grpc", endpoint="a:4317", previous_state="open")
    assert render.render_reset(reset).splitlines()[1].split() == ["otlp_grpc", "a:4317", "open", "closed"]
    drain = pb.DrainResponse(drained=False, waited_seconds=5)
    drain.remaining.add(exporter="otlp_grpc", requests=3, size=3, bytes=100)
    assert render.render_drain(drain).startswith("NOT drained after 5.0s\n")


def test_unreachable_admin_endpoint_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    for argv in (["status"], ["deadletters", "list"], ["breaker", "reset"], ["drain", "--timeout", "1"]):
        assert main([*argv, "--endpoint", f"127.0.0.1:{port}"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1
        assert captured.err.startswith(f"otlp-sidecar: cannot reach the admin API at 127.0.0.1:{port}")


def test_admin_commands_are_not_taken_for_run_arguments() -> None:
    from sidecar.__main__ import _normalise

    for command in ("status", "deadletters", "breaker", "drain", "validate"):
        assert _normalise([command])[0] == command
    assert _normalise(["--config", "x.yaml"]) == ["run", "--config", "x.yaml"]
