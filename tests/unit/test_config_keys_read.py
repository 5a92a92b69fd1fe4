"""Every configuration key is read by the code that acts on it (issue 14).

A key that is parsed and then ignored is worse than a missing one: an operator tunes it during an
incident and nothing changes. For every field of every Struct in sidecar/config/schema.py, this
test finds the modules outside sidecar/config/ (which only parses and validates) that consume the
Struct: those naming it, or reading a field whose type it is (`.health_probe` for
HealthProbeConfig). One of them must read the field: `x.field` or `getattr(x, "field")`. It
cannot prove the read happens on the right object; each feature's own tests do that. A field read
in another way is listed in EXCEPTIONS with the reason.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import msgspec

from sidecar.config import schema

ROOT = Path(__file__).resolve().parents[2] / "sidecar"

# (Struct, field) -> how it is read instead of by attribute name, in a module that consumes the Struct.
EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Module:
    path: Path
    attributes: frozenset[str]  # attribute names read, and getattr(x, "name") constants
    names: frozenset[str]  # names used or imported


def structs() -> list[type[msgspec.Struct]]:
    return [obj for _, obj in inspect.getmembers(schema, inspect.isclass)
            if issubclass(obj, msgspec.Struct) and obj.__module__ == schema.__name__ and obj is not schema.Base]


def _types_in(hint: object) -> set[object]:
    found = {hint}
    for arg in typing.get_args(hint):
        found |= _types_in(arg)
    return found


def parent_fields(all_structs: list[type[msgspec.Struct]]) -> dict[type, set[str]]:
    """For each Struct, the names of the fields (of other Structs, or of `Config`) whose type holds it."""
    out: dict[type, set[str]] = {struct: set() for struct in all_structs}
    for owner in [*all_structs, schema.Config]:
        for field_name, hint in typing.get_type_hints(owner).items():
            for struct in out:
                if struct in _types_in(hint):
                    out[struct].add(field_name)
    return out


def modules() -> list[Module]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if ROOT / "config" in path.parents or ROOT / "admin" / "v1" in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        attributes: set[str] = set()
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attributes.add(node.attr)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.ImportFrom):
                names.update(alias.name for alias in node.names)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)):
                attributes.add(node.args[1].value)
        out.append(Module(path, frozenset(attributes), frozenset(names)))
    return out


def unread_keys(all_structs: list[type[msgspec.Struct]]) -> list[str]:
    mods, parents = modules(), parent_fields(all_structs)
    unread = []
    for struct in all_structs:
        consumers = [m for m in mods if struct.__name__ in m.names or parents[struct] & m.attributes]
        for name in struct.__struct_fields__:
            if (struct.__name__, name) in EXCEPTIONS:
                continue
            if not any(name in m.attributes for m in consumers):
                unread.append(f"{struct.__name__}.{name} (consumers: "
                              f"{', '.join(str(m.path.relative_to(ROOT)) for m in consumers) or 'none'})")
    return unread


def test_every_config_key_is_read_where_its_struct_is_consumed() -> None:
    unread = unread_keys(structs())
    assert not unread, "configuration keys parsed but never read:\n  " + "\n  ".join(unread)


class ProbeConfig(schema.Base):
    """A key nobody reads, consumed where HealthProbeConfig is (through a field of the same name)."""

    never_read_by_anyone: int = 0


class Holder(schema.Base):
    health_probe: ProbeConfig


def test_the_check_finds_an_unread_key() -> None:
    """The test itself can fail: a field nobody reads is reported, with its consumers."""
    unread = unread_keys([*structs(), ProbeConfig, Holder])
    (reported,) = [key for key in unread if key.startswith("ProbeConfig.")]
    assert reported.startswith("ProbeConfig.never_read_by_anyone (consumers: exporters/"), reported


def test_exceptions_are_still_needed() -> None:
    fields = {(struct.__name__, name) for struct in structs() for name in struct.__struct_fields__}
    assert all(key in fields for key in EXCEPTIONS), "an exception names a key that no longer exists"
