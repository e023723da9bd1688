"""The bundled model files: shipped with the package, pinned by sha256, mirrorable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import synaptoroute
from synaptoroute import Encoder, EncoderError, ModelNotAvailableError
from synaptoroute.encoder import (
    DEFAULT_MODEL_SHA256,
    DEFAULT_TOKENIZER_SHA256,
    MODEL_DIR_ENV,
    _default_model_files,
    _sha256,
)

# Integration tier: the real model (and, for some, a real server).
pytestmark = pytest.mark.model

SENTENCE = "How do I get my money back?"


def _mirror(folder: Path) -> tuple[Path, Path]:
    """A mirror folder of the installed files (the model hard-linked where possible)."""
    model, tokenizer = _default_model_files()
    folder.mkdir()
    try:
        os.link(model, folder / "model.onnx")
    except OSError:  # another file system: copy instead
        (folder / "model.onnx").write_bytes(model.read_bytes())
    (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return folder / "model.onnx", folder / "tokenizer.json"


def test_tokenizer_ships_inside_the_package_with_its_licence() -> None:
    model, tokenizer = _default_model_files()
    package = Path(synaptoroute.__file__).parent
    assert tokenizer.parent == package / "_model"
    assert "Apache License" in (tokenizer.parent / "LICENSE").read_text(encoding="utf-8")
    assert _sha256(tokenizer) == DEFAULT_TOKENIZER_SHA256
    assert _sha256(model) == DEFAULT_MODEL_SHA256
    # The uncased BERT WordPiece vocabulary all-MiniLM-L6-v2 was trained with.
    ids = Tokenizer.from_file(str(tokenizer)).encode("hello world").ids
    assert ids[:4] == [101, 7592, 2088, 102]


def test_mirror_folder_with_correct_copies_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: Encoder
) -> None:
    model, tokenizer = _mirror(tmp_path / "mirror")
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "mirror"))
    assert _default_model_files() == (model, tokenizer)
    mirrored = Encoder()
    assert np.allclose(mirrored.encode([SENTENCE]), encoder.encode([SENTENCE]), atol=1e-6)


def test_tampered_tokenizer_in_the_mirror_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tokenizer = _mirror(tmp_path / "mirror")
    data = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["money"], vocab["back"] = vocab["back"], vocab["money"]
    tokenizer.write_text(json.dumps(data), encoding="utf-8")
    # The swap is a real change: the same text now maps to other token ids.
    original = Tokenizer.from_file(str(_default_model_files()[1])).encode(SENTENCE).ids
    assert Tokenizer.from_file(str(tokenizer)).encode(SENTENCE).ids != original
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(EncoderError) as info:
        Encoder().load()
    message = str(info.value)
    assert str(tokenizer) in message
    assert DEFAULT_TOKENIZER_SHA256 in message
    assert _sha256(tokenizer) in message
    assert MODEL_DIR_ENV in message


def test_tampered_model_in_the_mirror_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = _mirror(tmp_path / "mirror")
    model.unlink()  # never write through the hard link into the installed file
    model.write_bytes(b"not a model")
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(EncoderError, match=DEFAULT_MODEL_SHA256) as info:
        Encoder().load()
    assert str(model) in str(info.value)


@pytest.mark.parametrize("missing", ["model.onnx", "tokenizer.json"])
def test_missing_file_in_the_mirror_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    _mirror(tmp_path / "mirror")
    (tmp_path / "mirror" / missing).unlink()
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(ModelNotAvailableError, match="not found") as info:
        Encoder().load()
    assert str(tmp_path / "mirror" / missing) in str(info.value)
    assert MODEL_DIR_ENV in str(info.value)
