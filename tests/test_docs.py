"""The README and docs/ pages: every relative link and anchor leads somewhere, every `resexp COMMAND`
and `make TARGET` they show exists, every page is linked from the README, which stays an entry page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resexp.cli import app

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def code(page: Path) -> list[str]:
    """The page's code: fenced blocks and inline spans."""
    text = page.read_text()
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    return blocks + INLINE.findall(FENCE.sub("", text))


def commands() -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands}


def targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists() or (anchor and where.suffix == ".md" and anchor not in anchors(where)):
            broken.append(target)
    return broken


def unknown_names(page: Path) -> list[str]:
    """`resexp X` and `make X` in the page's code where X is no command, no target."""
    known, makes = commands(), targets()
    snippets = code(page)
    shown = {m for s in snippets for m in re.findall(r"(?:^|[\s$(])resexp ([a-z_][\w-]*)", s, re.M)}
    made = {m for s in snippets for m in re.findall(r"(?:^|[\s$(])make ([a-z][\w-]*)", s, re.M)}
    return sorted({f"resexp {c}" for c in shown - known} | {f"make {t}" for t in made - makes})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_make_target_shown_exists(page):
    assert unknown_names(page) == []


def missing_files(page: Path) -> list[str]:
    """Files of the repository the page names (resexp/..., tests/..., benchmarks/..., configs/...,
    notebooks/...) that are not there."""
    named = re.findall(
        r"(?<![\w./-])((?:resexp|tests|benchmarks|configs|notebooks)/[\w/.-]*\.(?:py|yaml|md|ipynb))", page.read_text()
    )
    return sorted({name for name in named if not (REPO / name).exists()})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page):
    assert missing_files(page) == []


def test_the_readme_is_an_entry_page_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_checks_see_a_broken_link_and_an_unknown_command(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n[a](#top) [b](missing.md) [c](#nowhere) [d](other.md#other-page) [e](other.md#gone)\n\n"
        "```bash\nresexp trian model.depth=20\nresexp train\nmake demo\nmake dmeo\n```\n"
    )
    assert broken_links(page) == ["missing.md", "#nowhere", "other.md#gone"]
    assert unknown_names(page) == ["make dmeo", "resexp trian"]
    page.write_text("see resexp/run/loop.py and resexp/launch.py")
    assert missing_files(page) == ["resexp/launch.py"]
