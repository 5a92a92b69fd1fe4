"""The disk-full tests' tmpfs helper: skips where it cannot mount, but fails under CI (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.volume import mounted_tmpfs


def test_without_root_it_skips_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"cannot mount one here \(not root\)"), \
            mounted_tmpfs(tmp_path / "v"):
        raise AssertionError("the body must not run without a volume")


def test_without_root_under_ci_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must run it"), mounted_tmpfs(tmp_path / "v"):
        raise AssertionError("the body must not run without a volume")
