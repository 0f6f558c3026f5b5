"""docs/mobile.md as a mobile developer meets it: the five calls an app makes first, on one screen,
then the reference, and every link into it landing on one of its sections."""

from __future__ import annotations

import re

from tests.conftest import ROOT

GUIDE = ROOT / "docs" / "mobile.md"
# A screen of a laptop's editor or browser: the calls, their table and the pointers after it.
ONE_SCREEN_LINES = 45


def sections(page: str) -> list[tuple[str, list[str]]]:
    """The page's headings (outside code blocks), each with the lines up to the next heading."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in page.splitlines():
        fenced = fenced != line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            found.append((line, []))
        elif found:
            found[-1][1].append(line)
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_the_guide_opens_with_the_five_calls_per_platform_before_the_reference():
    page = sections(GUIDE.read_text())
    headings = [heading for heading, _ in page]
    assert headings[1:3] == ["## The five calls", "## Reference"]
    assert headings.index("## The five calls") < headings.index("## 1. The flow")
    body = "\n".join(page[1][1]).strip()
    assert len(body.splitlines()) <= ONE_SCREEN_LINES
    rows = [re.split(r"(?<!\\)\|", line) for line in body.splitlines() if re.match(r"\| (\d|SDK) \|", line)]
    assert [row[1].strip() for row in rows] == ["1", "2", "3", "4", "5", "SDK"]
    calls = ["POST /api/v1/tokens", "POST /api/v1/connect-attempts", "/browser-closed", "?wait=", "/api/v1/sdk-tokens"]
    assert [call for call in calls if call not in body] == []
    # Each row (cells split on unescaped pipes) sends the reader on to the iOS, Android and React Native sections that do it in full.
    for row in rows:
        ios, android, react_native = row[4:7]
        assert re.search(r"\(#7\d-", ios) and re.search(r"\(#8\d-", android), row
        assert re.search(r"\(#(9-react-native|apple-health-samsung-health)", react_native), row


def test_every_link_into_the_guide_names_one_of_its_sections():
    """Including the table of contents and the guide's own cross-references."""
    targets = {anchor(heading) for heading, _ in sections(GUIDE.read_text())}
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    links = [
        (page.name, fragment)
        for page in pages
        for target, fragment in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", page.read_text())
        if (target.rsplit("/", 1)[-1] or page.name) == "mobile.md"
    ]
    assert len(links) > 40  # the contents alone link to each section
    assert [link for link in links if link[1] not in targets] == []
