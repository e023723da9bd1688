"""MkDocs hooks: the repository's root Markdown files become pages of the docs site.

README.md is the home page; CHANGELOG.md, CONTRIBUTING.md, SECURITY.md and BENCHMARKS.md
are pages too, read from where they live (no copies under docs/). Links are written for
GitHub, where docs/ pages point up (``../BENCHMARKS.md``) and root files point down
(``docs/cli.md``); this rewrites them to the site's pages so that ``--strict`` checks
every one of them instead of rejecting them as outside the docs folder.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
#: Root file -> the page it becomes.
ROOT_PAGES = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "CONTRIBUTING.md": "contributing.md",
    "SECURITY.md": "security.md",
    "BENCHMARKS.md": "benchmarks.md",
}
#: README.md is also the package index's project page, where relative links break; it
#: links into the repository with absolute URLs under this prefix, mapped back here.
REPO_BLOB = "https://github.com/synaptoroute/synaptoroute/blob/main/"
_LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the root files as generated pages.

    Args:
        files: the files mkdocs found in the docs folder.
        config: the site's configuration.

    Returns:
        The same collection with one page per root file.
    """
    for source, page in ROOT_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def site_target(target: str, page_uri: str) -> str:
    """Where a GitHub-relative link of the page at ``page_uri`` points on the site.

    Args:
        target: the link as written (relative, without its anchor).
        page_uri: the page's path inside the site (``cli.md``, ``changelog.md``).

    Returns:
        The link to use: unchanged unless it points between docs/ and the root files.
    """
    if target.startswith(REPO_BLOB):
        local = target.removeprefix(REPO_BLOB)
        if local in ROOT_PAGES or local.rstrip("/") == "docs" or local.startswith("docs/"):
            return site_target(local, "index.md")
        return target
    if "://" in target or target.startswith(("/", "mailto:")):
        return target
    root_source = next((s for s, p in ROOT_PAGES.items() if p == page_uri), None)
    # The file's path from the repository root, as GitHub resolves it.
    here = "" if root_source is not None else "docs"
    path = posixpath.normpath(posixpath.join(here, target))
    if path in ROOT_PAGES:
        return ROOT_PAGES[path]
    if path == "docs":
        return "index.md"
    if path.startswith("docs/"):
        return path.removeprefix("docs/")
    return target


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    """Rewrite the links between docs/ and the root files (see the module docstring).

    Args:
        markdown: the page's source.
        page: the page.

    Returns:
        The source with those links pointing at the site's pages.
    """
    uri = page.file.src_uri

    def replace(match: re.Match[str]) -> str:
        target = site_target(match["target"], uri)
        return f"]({target}{match['anchor'] or ''})"

    return _LINK.sub(replace, markdown)
