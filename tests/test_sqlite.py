"""The SQLite store's open: what a file it cannot use is reported as."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    NotADatabaseError,
    Route,
    SQLiteStorage,
    StorageError,
)


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


@pytest.mark.model
def test_a_stored_vector_that_is_not_finite_is_reported_and_reencode_mends_it(
    tmp_path: Path, encoder: Encoder
) -> None:
    # A NaN in one stored vector (a store damaged outside the library) made its route's
    # every score NaN, read as no score: the route was never chosen again, silently.
    path = tmp_path / "routes.db"
    router = AdaptiveRouter(encoder, SQLiteStorage(path))
    router.add_routes(
        [
            Route(name="billing", utterances=["I need a refund", "where is my invoice"]),
            Route(name="weather", utterances=["will it rain tomorrow", "forecast for paris"]),
        ]
    )
    assert router.query("will it rain").name == "weather"
    router.close()
    with sqlite3.connect(path) as con:
        row_id, blob = con.execute(
            "SELECT id, vector FROM utterances WHERE text = 'forecast for paris'"
        ).fetchone()
        vector = np.frombuffer(blob, dtype=np.float32).copy()
        vector[5] = np.nan
        con.execute("UPDATE utterances SET vector = ? WHERE id = ?", (vector.tobytes(), row_id))
    con.close()
    with pytest.raises(StorageError, match=r"not finite numbers .* route\(s\) 'weather'; reopen"):
        AdaptiveRouter.open(path, encoder)
    mended = AdaptiveRouter.open(path, encoder, reencode=True)
    assert mended.query("will it rain").name == "weather"
    mended.close()
    again = AdaptiveRouter.open(path, encoder)  # written back: opens without reencode
    assert again.query("will it rain").name == "weather"
    assert again.get_route("weather").utterances == ["will it rain tomorrow", "forecast for paris"]
    again.close()
