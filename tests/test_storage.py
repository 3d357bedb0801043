"""storage.count_files: right counts, and no directory scan per status once a directory has settled."""

from __future__ import annotations

import os
import time

from supervisor import storage


def _age(path, seconds=10.0):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_counts_regular_files_only(tmp_path):
    auth = tmp_path / "auth"
    auth.mkdir()
    for i in range(5):
        (auth / f"pre-key-{i}.json").write_text("{}")
    (auth / "sub").mkdir()
    (auth / "link").symlink_to(auth / "pre-key-0.json")
    assert storage.count_files(auth) == 5
    assert storage.count_files(tmp_path / "missing") == 0


def test_settled_directory_is_not_rescanned_until_it_changes(tmp_path, monkeypatch):
    auth = tmp_path / "auth"
    auth.mkdir()
    for i in range(3):
        (auth / f"k{i}.json").write_text("{}")
    _age(auth)
    scans = []
    real_scandir = os.scandir
    monkeypatch.setattr(storage.os, "scandir", lambda p: scans.append(p) or real_scandir(p))
    assert [storage.count_files(auth) for _ in range(50)] == [3] * 50
    assert len(scans) == 1
    (auth / "k3.json").write_text("{}")  # a new file changes the directory's mtime
    assert storage.count_files(auth) == 4
    assert len(scans) == 2


def test_fresh_directory_is_always_rescanned(tmp_path):
    auth = tmp_path / "auth"
    auth.mkdir()
    counts = []
    for i in range(5):  # changes faster than a coarse timestamp tick must never be missed
        (auth / f"k{i}.json").write_text("{}")
        counts.append(storage.count_files(auth))
    assert counts == [1, 2, 3, 4, 5]
