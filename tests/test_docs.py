"""docs/ stays true to the tree: settings.md has a row per Hyperparameters field with its default, every relative link
in docs/*.md resolves (anchors too), and every raw output kept under docs/raw/ is cited by a page."""
import dataclasses
import re
from pathlib import Path

import pytest

import train_gpt as tg

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_settings_page_has_every_field_with_its_default():
    rows = {}
    for line in (DOCS / "settings.md").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\| `([A-Z0-9_]+)` \| ([^|]+) \|", line):
            rows[m[1]] = m[2].strip().strip("`")
    for field in dataclasses.fields(tg.Hyperparameters):
        name, default = field.name.upper(), field.default
        assert name in rows, f"docs/settings.md has no row for {name}"
        text = rows[name]
        if isinstance(default, bool):
            assert {"0": False, "1": True}[text] is default, name
        elif text in ("random", "empty"):
            assert default == "", name
        else:
            assert type(default)(text) == default, f"{name}: docs say {text}, the dataclass {default!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # an address, not a file here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading for #{anchor} in {resolved.name}"


def test_every_raw_output_is_cited():
    cited = {(page.parent / target.partition("#")[0]).resolve()
             for page in PAGES for target in LINK.findall(page.read_text(encoding="utf-8"))}
    kept = [p for p in (DOCS / "raw").rglob("*") if p.is_file()]
    assert kept and not [p.relative_to(DOCS) for p in kept if p.resolve() not in cited]
