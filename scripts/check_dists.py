"""Check the contents of the built wheels and sdists (called by scripts/wheels.sh).

Every distribution carries LICENSE and NOTICE; no sdist ships tests (they need the
repository); every wheel has ``py.typed``, project URLs and the ``Typing :: Typed``
classifier; the core wheel holds the tokenizer with the pinned sha256 and its licence.

Usage::

    python scripts/check_dists.py DIST_FOLDER
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pinned_tokenizer_sha256() -> str:
    source = (ROOT / "synaptoroute" / "encoder.py").read_text(encoding="utf-8")
    match = re.search(r'^DEFAULT_TOKENIZER_SHA256 = "([0-9a-f]{64})"', source, re.MULTILINE)
    if match is None:
        msg = "DEFAULT_TOKENIZER_SHA256 not found in synaptoroute/encoder.py"
        raise SystemExit(msg)
    return match.group(1)


def check_sdist(path: Path) -> list[str]:
    """Problems found in one sdist.

    Args:
        path: the ``.tar.gz`` file.

    Returns:
        One line per problem; empty when the sdist is fine.
    """
    with tarfile.open(path) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    problems = [
        f"{path.name}: {need} missing" for need in ("LICENSE", "NOTICE") if need not in names
    ]
    shipped_tests = [name for name in names if name.startswith("tests/") or "/tests/" in name]
    if shipped_tests:
        problems.append(f"{path.name}: ships tests without the repository: {shipped_tests[:3]}")
    return problems


def check_wheel(path: Path, tokenizer_sha256: str) -> list[str]:
    """Problems found in one wheel.

    Args:
        path: the ``.whl`` file.
        tokenizer_sha256: the digest pinned in ``synaptoroute/encoder.py``.

    Returns:
        One line per problem; empty when the wheel is fine.
    """
    problems: list[str] = []
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode("utf-8")
        for need in ("licenses/LICENSE", "licenses/NOTICE"):
            if not any(n.endswith(f".dist-info/{need}") for n in names):
                problems.append(f"{path.name}: {need} missing")
        if not any(n.endswith("/py.typed") for n in names):
            problems.append(f"{path.name}: py.typed missing")
        for need in ("Classifier: Typing :: Typed", "Project-URL: Homepage", "Keywords: "):
            if need not in text:
                problems.append(f"{path.name}: METADATA lacks {need!r}")
        if path.name.startswith("synaptoroute-"):
            tokenizer = "synaptoroute/_model/tokenizer.json"
            if tokenizer not in names or "synaptoroute/_model/LICENSE" not in names:
                problems.append(f"{path.name}: the bundled tokenizer or its licence is missing")
            elif hashlib.sha256(archive.read(tokenizer)).hexdigest() != tokenizer_sha256:
                problems.append(f"{path.name}: {tokenizer} does not have the pinned sha256")
    return problems


def main(argv: list[str]) -> int:
    """Check every distribution in the folder; print the problems.

    Args:
        argv: one argument, the folder holding the built distributions.

    Returns:
        0 when all is well, 1 otherwise.
    """
    dist = Path(argv[0])
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    problems = (
        [] if len(sdists) == len(wheels) == 3 else [f"expected 3 sdists and 3 wheels in {dist}"]
    )
    sha = _pinned_tokenizer_sha256()
    for sdist in sdists:
        problems += check_sdist(sdist)
    for wheel in wheels:
        problems += check_wheel(wheel, sha)
    print("\n".join(problems) or f"{len(sdists)} sdists and {len(wheels)} wheels: contents ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
