"""The SQLite store's open: what a file it cannot use is reported as."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from synaptoroute import NotADatabaseError, SQLiteStorage, StorageError


def read_only_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid store that SQLite may read but not write, as in a folder the process
    cannot write (tests run as root, whom permission bits do not stop): its
    connections open it with ``mode=ro``, and it is in rollback-journal mode, so the
    open's switch to WAL is a write that SQLite refuses with SQLITE_READONLY, as it
    refuses to create the -wal and -shm files of a WAL store in such a folder."""
    path = tmp_path / "ro.db"
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    db.close()

    def connect(self: SQLiteStorage, existing: bool = False) -> sqlite3.Connection:
        uri = Path(self.file).as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    monkeypatch.setattr(SQLiteStorage, "_connect", connect)
    return path


def test_a_store_that_cannot_be_written_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was "'ro.db' is not a readable SQLite database (attempt to write a readonly
    # database)": a NotADatabaseError (bad input) for a store that is fine.
    path = read_only_store(tmp_path, monkeypatch)
    before = path.read_bytes()
    with pytest.raises(StorageError) as info:
        SQLiteStorage(path)
    assert not isinstance(info.value, NotADatabaseError)
    assert "the file or its folder is not writable" in str(info.value)
    assert "readonly" in str(info.value)  # SQLite's own words, for a search
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db"]


def test_a_file_that_is_no_database_is_still_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes" * 100)
    with pytest.raises(NotADatabaseError, match="not a readable SQLite database"):
        SQLiteStorage(path)
