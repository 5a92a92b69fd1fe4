"""docs/ says what the code does: every config key, metric family, log event and alert has its entry.

Each failure names the key, family, event or alert that lacks one, and what to do:
* configuration.md is generated (`make docs`) from sidecar/config/schema.py; a key needs a comment there;
* metrics.md, troubleshooting.md and runbooks.md are written by hand and checked here against the
  metrics registry, the `event` fields in sidecar/ and collector-config/alerts.yml.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from sidecar import docgen
from sidecar.config import schema
from sidecar.telemetry.metrics import Metrics
from tests.markdown import DOCS, ROOT, anchors, metric_rows, sections

# ------------------------------------------------------------------------------------- configuration.md


def test_configuration_md_is_generated_from_the_current_schema() -> None:
    assert (DOCS / "configuration.md").read_text() == docgen.render(), \
        "docs/configuration.md is stale: run `make docs` (python -m sidecar.docgen) and commit it"


def test_every_config_key_has_a_description() -> None:
    missing = docgen.undescribed()
    assert not missing, ("config keys without a description: add a comment above the field (or a Struct "
                         "docstring) in sidecar/config/schema.py, then `make docs`:\n  " + "\n  ".join(missing))


def _schema_fields(cls: type[schema.Base], prefix: str, seen: set[str]) -> None:
    for info in msgspec.structs.fields(cls):
        path = f"{prefix}.{info.encode_name}"
        seen.add(path)
        for nested in _structs_in(info.type):
            suffix = "[]" if "list[" in repr(info.type) else ".<name>" if "dict[" in repr(info.type) else ""
            _schema_fields(nested, path + suffix, seen)


def _structs_in(tp: Any) -> list[type[schema.Base]]:
    found = [tp] if isinstance(tp, type) and issubclass(tp, schema.Base) else []
    for arg in getattr(tp, "__args__", ()) or ():
        found.extend(_structs_in(arg))
    return found


def test_every_field_of_every_section_is_a_row() -> None:
    """Walked independently of the generator: a Struct reachable from a section but skipped fails here."""
    expected: set[str] = set()
    for section in docgen.SECTIONS:
        _schema_fields(section.struct, section.prefix, expected)
    documented = {key.path for _, keys in docgen.all_keys() for key in keys}
    assert expected == documented, (sorted(expected - documented), sorted(documented - expected))
    for kinds, prefix in ((schema.RECEIVER_KINDS, "receivers."), (schema.PROCESSOR_KINDS, "processors."),
                          (schema.EXPORTER_KINDS, "exporters.")):
        for cls in kinds.values():
            assert any(s.struct is cls for s in docgen.SECTIONS), f"no section documents {prefix}{cls.__name__}"


def test_the_sighup_column_follows_sidecar_reload() -> None:
    reload = {key.path: key.reload for _, keys in docgen.all_keys() for key in keys}
    assert reload["exporters.*.retry_on_failure.multiplier"] == "yes"
    assert reload["exporters.*.health_probe.interval"] == "yes"
    assert reload["exporters.*.health_probe.enabled"] == "restart"  # turning probing on or off
    assert reload["exporters.*.health_probe"] == "per key"
    assert reload["exporters.*.endpoint"] == "restart"
    assert reload["service.telemetry.anomaly.threshold"] == "yes"
    assert reload["service.telemetry.metrics.address"] == "restart"
    assert reload["service.pipelines.<name>.processors"] == "yes"
    assert reload["service.pipelines.<name>.exporters"] == "restart"
    assert reload["extensions.fleet"] == "restart"
    assert set(reload.values()) <= {"yes", "restart", "per key"}


def test_descriptions_are_read_from_every_form_the_schema_uses(tmp_path: Path) -> None:
    source = tmp_path / "described_schema.py"
    source.write_text('''
from typing import Annotated
import msgspec


class Described(msgspec.Struct):
    """A section."""

    # Above,
    # on two lines.
    above: int = 1
    trailing: int = 2  # at the end of the line
    below: int = 3
    """A string below the field."""
    meta: Annotated[int, msgspec.Meta(description="In Meta.")] = 4
    bare: int = 5
''')
    spec = importlib.util.spec_from_file_location("described_schema", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["described_schema"] = module
    try:
        spec.loader.exec_module(module)
        described = docgen.field_descriptions(module.Described)
    finally:
        del sys.modules["described_schema"]
    assert described == {"above": "Above, on two lines.", "trailing": "at the end of the line",
                         "below": "A string below the field.", "meta": "In Meta.", "bare": ""}


def test_docgen_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(docgen.render().replace("| yes |", "| restart |", 1))
    monkeypatch.setattr(docgen, "OUTPUT", stale)
    monkeypatch.setattr(docgen, "ROOT", tmp_path)
    assert docgen.main(["--check"]) == 1
    assert docgen.main([]) == 0 and stale.read_text() == docgen.render()
    assert docgen.main(["--check"]) == 0


# ------------------------------------------------------------------------------------------- metrics.md


def _declared_families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exposed family name -> (type, label names), for every family of a fresh Metrics registry."""
    registry = Metrics().registry
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector in list(registry._collector_to_names):  # private, but the label names are only there
        for family in collector.collect():
            name = family.name + "_total" if family.type == "counter" else family.name
            labels = tuple(getattr(collector, "_labelnames", ()))
            families[name] = (family.type, labels)
    return families


def test_metrics_md_documents_every_family_with_its_type_and_labels() -> None:
    documented: dict[str, tuple[str, tuple[str, ...]]] = {}
    for row in metric_rows():
        assert row.meaning, f"docs/metrics.md: {row.names} has no meaning"
        for name in row.names:
            assert name not in documented, f"docs/metrics.md lists {name} twice"
            documented[name] = (row.type, row.labels)
    declared = _declared_families()
    problems = [f"{name}: no row; add `| `{name}` | {kind} | {', '.join(f'`{lbl}`' for lbl in labels)} | "
                f"<meaning> |`" for name, (kind, labels) in sorted(declared.items()) if name not in documented]
    problems += [f"{name}: listed but the registry has no such family" for name in documented
                 if name not in declared]
    for name, (kind, labels) in declared.items():
        if name in documented and documented[name] != (kind, labels):
            problems.append(f"{name}: documented as {documented[name]}, the registry says {(kind, labels)}")
    assert not problems, "docs/metrics.md disagrees with sidecar/telemetry/metrics.py:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------ troubleshooting.md


def events_in_code() -> dict[str, str]:
    """Every `"event": "<name>"` in a dict literal under sidecar/ -> the first file and line using it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        if "_pb2" in path.name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "event":
                    assert isinstance(value, ast.Constant) and isinstance(value.value, str), \
                        f"{path.relative_to(ROOT)}:{node.lineno}: an `event` must be a literal name"
                    found.setdefault(value.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_troubleshooting_md_has_an_entry_for_every_log_event() -> None:
    code = events_in_code()
    assert {"config_reload", "drop", "breaker_transition"} <= set(code)  # the scan finds them
    entries = {heading.strip("`") for heading in sections((DOCS / "troubleshooting.md").read_text(), 3)}
    missing = [f"{event} (logged at {where})" for event, where in sorted(code.items()) if event not in entries]
    assert not missing, ("docs/troubleshooting.md has no `### `<event>`` entry (meaning, action) for:\n  "
                         + "\n  ".join(missing))
    stale = sorted(entries - set(code))
    assert not stale, f"docs/troubleshooting.md documents events no code logs: {stale}"


def test_every_troubleshooting_entry_says_what_it_means_and_what_to_do() -> None:
    for event, body in sections((DOCS / "troubleshooting.md").read_text(), 3).items():
        for label in ("**Means:**", "**Do:**"):
            assert label in body, f"docs/troubleshooting.md {event}: no {label}"


# ----------------------------------------------------------------------------------------- runbooks.md

RUNBOOKS = "docs/runbooks.md"


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((ROOT / "collector-config" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_has_a_runbook_url_that_resolves_to_its_section() -> None:
    text = (ROOT / RUNBOOKS).read_text()
    known = set(anchors(text))
    sections_ = sections(text, 2)
    problems: list[str] = []
    for rule in _rules():
        alert = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url")
        if alert not in sections_:
            problems.append(f"{alert}: {RUNBOOKS} has no `## {alert}` section")
        if url is None:
            problems.append(f"{alert}: no runbook_url annotation in collector-config/alerts.yml")
            continue
        path, _, anchor = url.partition("#")
        if path != RUNBOOKS or anchor not in known or anchor != alert.lower():
            problems.append(f"{alert}: runbook_url {url!r} does not resolve to {RUNBOOKS}#{alert.lower()}")
    assert not problems, "\n".join(problems)


def test_every_runbook_section_is_for_an_alert_and_complete() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    runbook_sections = {h: b for h, b in sections((ROOT / RUNBOOKS).read_text(), 2).items() if h.startswith("Sidecar")}
    assert set(runbook_sections) == alerts, sorted(set(runbook_sections) ^ alerts)
    for alert, body in runbook_sections.items():
        for label in ("**Means:**", "**Confirm:**", "**Do:**", "**Escalate:**"):
            assert label in body, f"{RUNBOOKS} {alert}: no {label}"


# --------------------------------------------------------------------------------------------- README.md


def test_readme_is_a_front_door_with_the_two_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "README.md is the front door: reference material goes to docs/"
    block = readme[readme.index("```sh"):readme.index("```", readme.index("```sh") + 5)]
    assert [line.split()[:2] for line in block.splitlines()[1:]] == [["make", "demo"], ["make", "test"]]
    # The first test command in the README (as shared/hooks/before-stop finds it) is what CI runs.
    first = re.search(r"make test|\./[a-z_-]+ test|python -m pytest[^`]*|pytest[^`]*", readme)
    assert first is not None and first.group(0) == "make test"
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
    for page in ("operations", "configuration", "metrics", "runbooks", "troubleshooting", "development"):
        assert f"(docs/{page}.md)" in readme, f"README.md does not point at docs/{page}.md"
