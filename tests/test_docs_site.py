"""The docs site's link rewriting (scripts/mkdocs_hooks.py); CI builds the site itself."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


@pytest.mark.parametrize(
    ("target", "page", "expected"),
    [
        ("../BENCHMARKS.md", "server.md", "benchmarks.md"),
        ("../README.md", "langchain.md", "index.md"),
        ("cli.md", "server.md", "cli.md"),
        ("docs/cli.md", "index.md", "cli.md"),
        ("docs/", "index.md", "index.md"),
        ("BENCHMARKS.md", "index.md", "benchmarks.md"),
        ("CHANGELOG.md", "security.md", "changelog.md"),
        ("docs/versioning.md", "changelog.md", "versioning.md"),
        ("https://example.org/x.md", "index.md", "https://example.org/x.md"),
        ("../benchmarks/README.md", "async.md", "../benchmarks/README.md"),
        (hooks.REPO_BLOB + "docs/cli.md", "index.md", "cli.md"),
        (hooks.REPO_BLOB + "docs/", "index.md", "index.md"),
        (hooks.REPO_BLOB + "BENCHMARKS.md", "index.md", "benchmarks.md"),
        (
            hooks.REPO_BLOB + "examples/quickstart.py",
            "index.md",
            hooks.REPO_BLOB + "examples/quickstart.py",
        ),
    ],
)
def test_links_point_at_site_pages(target: str, page: str, expected: str) -> None:
    assert hooks.site_target(target, page) == expected


def test_the_readme_links_absolutely_for_the_package_index() -> None:
    # README.md is the project page on the package index, where relative links break.
    relative = [
        m["target"]
        for m in hooks._LINK.finditer((ROOT / "README.md").read_text())
        if "://" not in m["target"] and not m["target"].startswith(("#", "mailto:"))
    ]
    assert relative == []


def test_every_docs_page_and_root_page_is_in_the_nav() -> None:
    nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages | set(hooks.ROOT_PAGES.values()) <= nav
    assert all((ROOT / source).is_file() for source in hooks.ROOT_PAGES)
