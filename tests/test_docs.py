"""User documents: every relative link in README.md and docs/*.md points to an existing file, and
README.md stays small enough to read (at most 15,000 bytes)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 15_000

# [text](target) and ![alt](target); the target ends at the first space (an optional "title")
# or closing parenthesis. Fenced code blocks and inline code are removed before matching.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ...


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    links = []
    for target in LINK.findall(text):
        if target.startswith("#") or EXTERNAL.match(target):
            continue
        links.append(target)
    return links


def test_link_parser_keeps_only_relative_paths():
    text = ("[a](docs/cli.md) ![b](docs/x.svg#frag) [c](https://e.org) [d](mailto:x@y.z) "
            "[e](#anchor) [f](http://e.org/p) `[g](inline.md)`\n```\n[h](fenced.md)\n```\n"
            '[i](../bench/README.md "title")')
    assert relative_links(text) == ["docs/cli.md", "docs/x.svg#frag", "../bench/README.md"]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    missing = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue
        if not (doc.parent / path).exists():
            missing.append(target)
    assert missing == [], f"{doc.relative_to(ROOT)}: links to missing files: {missing}"


def test_docs_exist():
    assert README.is_file()
    assert list((ROOT / "docs").glob("*.md")), "docs/ holds no .md page"


def test_readme_is_at_most_15000_bytes():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes (limit {README_MAX_BYTES:,})"
