"""The SQLite store's open: what a file it cannot use is reported as."""

from __future__ import annotations

from pathlib import Path

import pytest

from synaptoroute import NotADatabaseError, SQLiteStorage, StorageError


def test_a_store_that_cannot_be_written_is_a_storage_error(read_only_store: Path) -> None:
    # It was "'ro.db' is not a readable SQLite database (attempt to write a readonly
    # database)": a NotADatabaseError (bad input) for a store that is fine.
    path = read_only_store
    before = path.read_bytes()
    with pytest.raises(StorageError) as info:
        SQLiteStorage(path)
    assert not isinstance(info.value, NotADatabaseError)
    assert "the file or its folder is not writable" in str(info.value)
    assert "readonly" in str(info.value)  # SQLite's own words, for a search
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ro.db"]


def test_a_file_that_is_no_database_is_still_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes" * 100)
    with pytest.raises(NotADatabaseError, match="not a readable SQLite database"):
        SQLiteStorage(path)
