"""Tests of zsvss_nb.io.provenance's figure blocks: the package commit and configs as run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from zsvss_nb import SegmentConfig
from zsvss_nb.io import provenance

ROOT = Path(__file__).resolve().parents[1]


def test_package_commit_is_this_checkouts_head() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (or no git): the commit is None there")
    head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    info = provenance.package_info()
    assert info["commit"] == head.stdout.decode().strip()
    assert isinstance(info["dirty"], bool)
    assert info["version"] == provenance.versions()["zsvss"]


def test_package_commit_is_none_outside_a_checkout(monkeypatch) -> None:
    monkeypatch.setattr(provenance, "git_output", lambda folder, *args: None)
    provenance.package_commit.cache_clear()
    try:
        assert provenance.package_commit() == {"commit": None, "dirty": None}
    finally:
        monkeypatch.undo()
        provenance.package_commit.cache_clear()


def test_package_commit_ignores_a_repository_that_only_contains_the_package(monkeypatch) -> None:
    """An installed copy inside some other git repository (a venv in a project) has no commit."""
    answers = {"--show-toplevel": "/somewhere/else"}
    monkeypatch.setattr(
        provenance, "git_output", lambda folder, *args: answers.get(args[-1], "abc")
    )
    provenance.package_commit.cache_clear()
    try:
        assert provenance.package_commit()["commit"] is None
    finally:
        monkeypatch.undo()
        provenance.package_commit.cache_clear()


def test_config_record_names_the_preset_and_what_changed() -> None:
    cfg = SegmentConfig.dinov2().replace(max_side=224, k=4, window=3)
    record = provenance.config_record(cfg)
    assert record["preset"] == "dinov2"
    assert record["changed"] == {"features.max_side": 224, "context.k": 4, "window": 3}
    assert SegmentConfig.from_dict(record["config"]) == cfg
    assert provenance.config_record(SegmentConfig.paper_svd())["changed"] == {}
    odd = SegmentConfig(preset="my-own")
    assert provenance.config_record(odd)["changed"] is None
