"""The README and docs/ hold together: every relative link names a file or folder that exists,
every `#fragment` names a heading of its Markdown file, and the README stays a short front door.

Pure text: no Spark, no frameworks."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target), the text over lines too, the target optionally in <>, an
# optional "title" after it.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^\s<>()]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str, code_spans: bool = False) -> str:
    """The text with fenced code blocks blanked, and code spans unless `code_spans`; each line
    kept at its number."""
    lines, fenced = [], None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and fenced is None:
            fenced = fence.group(1)
        elif fence and fence.group(1) == fenced:
            fenced = None
        elif fenced is None:
            lines.append(line)
            continue
        lines.append("")
    text = "\n".join(lines)
    return text if code_spans else CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, links and emphasis reduced to their
    text, punctuation other than `-` and `_` dropped, spaces made `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; repeated ones get -1, -2, ... as on GitHub."""
    found, seen = set(), {}
    for line in _prose(path.read_text(encoding="utf-8"), code_spans=True).splitlines():
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link and image of a Markdown file, code left out."""
    text = _prose(path.read_text(encoding="utf-8"))
    found = [*INLINE_LINK.finditer(text), *REFERENCE_LINK.finditer(text)]
    for match in sorted(found, key=lambda m: m.start()):
        yield text.count("\n", 0, match.start()) + 1, match.group(1)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(path):
        if not target or target.startswith(EXTERNAL):
            continue
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: no such file or folder")
            continue
        if fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{where}: no heading #{fragment} in {linked.name}")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def test_slugs_are_githubs():
    assert slug("Two commands") == "two-commands"
    assert slug("Models with global context: `--merge blend`") == (
        "models-with-global-context---merge-blend"
    )
    assert slug("Installing beside a platform's Spark") == "installing-beside-a-platforms-spark"
    assert slug("`spark-submit.sh`") == "spark-submitsh"
    assert slug("`_run.json`") == "_runjson"
    assert slug("Object storage (S3)") == "object-storage-s3"
    assert slug("See [the docs](docs/x.md) here") == "see-the-docs-here"


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n\n## A heading\n", encoding="utf-8")
    document = tmp_path / "doc.md"
    document.write_text(
        "# Top\n"
        "[fine](other.md#a-heading) [second](other.md#a-heading-1) [self](#top)\n"
        "[gone](missing.md) [no heading](other.md#nothing) ![image](img.png)\n"
        "[web](https://example.com/x) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[ref]: also-missing.md\n"
        "## With `code`: here\n"
        "[a link whose text\nruns on](#with-code-here) [and one that\nbreaks](gone/)\n",
        encoding="utf-8",
    )
    assert broken_links(document, root=tmp_path) == [
        "doc.md:3: missing.md: no such file or folder",
        "doc.md:3: other.md#nothing: no heading #nothing in other.md",
        "doc.md:3: img.png: no such file or folder",
        "doc.md:8: also-missing.md: no such file or folder",
        "doc.md:11: gone/: no such file or folder",
    ]
