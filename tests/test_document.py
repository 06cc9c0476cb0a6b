"""The report's text comes from templates: document.py looks values up, templates/ word them, and index.html is
report.md rendered by markdown-it. Checked on the fabricated results tree of test_report.py."""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from study import document, findings
from test_report import build, fabricate

SOURCE = Path(document.__file__)
TEMPLATES = SOURCE.parent / "templates"
# document.py and the modules it is split into (reading, statistics, findings, sections, rendering)
SOURCES = [SOURCE.with_name(f"{name}.py") for name in ("document", "reader", "digest", "bullets", "sections", "render")]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = fabricate(tmp_path_factory.mktemp("results") / "results")
    build(root)
    return root / "report"


class Page(HTMLParser):
    """The headings (id, text), tables (rows of cell texts) and figures (id, image source) of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.figures: dict[str, str] = {}
        self._heading: list[str] | None = None
        self._cell: list[str] | None = None
        self._figure: str | None = None
        self._id = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if re.fullmatch(r"h[1-6]", tag):
            self._heading, self._id = [], attrs.get("id", "")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "figure":
            self._figure = attrs.get("id", "")
        elif tag == "img" and self._figure is not None:
            self.figures[self._figure] = attrs.get("src", "")

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append((self._id, "".join(self._heading).strip()))
            self._heading = None
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        for part in (self._heading, self._cell):
            if part is not None:
                part.append(data)


def markdown_tables(md: str) -> list[list[list[str]]]:
    """The pipe tables of report.md as rows of cell texts (links as their text, escaped pipes as pipes)."""
    tables, current = [], None
    for line in md.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if re.fullmatch(r"\|(---\|)+", line):
            continue
        if current is None:
            current = []
            tables.append(current)
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        current.append([re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", c).replace("\\|", "|").strip() for c in cells])
    return tables


def test_the_html_is_the_markdown_rendered(report: Path):
    md, html_text = (report / "report.md").read_text(), (report / "index.html").read_text()
    assert document.render_html(md, report / "figures", "Loss study report") == html_text


def test_every_heading_of_the_markdown_is_an_anchor_of_the_html(report: Path):
    md, page = (report / "report.md").read_text(), Page((report / "index.html").read_text())
    headings = [line.lstrip("#").strip() for line in md.splitlines() if re.match(r"#{1,6} ", line)]
    assert len(headings) > 10
    assert page.headings == [(document.slug(text), text) for text in headings]
    for target in re.findall(r"\]\(#([^)]+)\)", md):  # every link to a section lands on a heading
        assert target in {slug for slug, _ in page.headings}, target


def test_every_table_of_the_markdown_is_a_table_of_the_html_with_the_same_cells(report: Path):
    md, page = (report / "report.md").read_text(), Page((report / "index.html").read_text())
    tables = markdown_tables(md)
    assert len(tables) > 10
    assert page.tables == tables


def test_every_figure_is_inlined_under_its_anchor(report: Path):
    md, html_text = (report / "report.md").read_text(), (report / "index.html").read_text()
    page = Page(html_text)
    drawn = sorted(path.stem for path in (report / "figures").glob("*.png"))
    assert sorted(name.removeprefix("fig-") for name in page.figures) == drawn
    assert all(src.startswith("data:image/png;base64,") for src in page.figures.values())
    links = re.findall(r"(?<!!)\[[^\[\]]*\]\(figures/([^)]+)\.png\)", md)
    assert links
    for name in links:  # a link to a figure (not an image) lands on its figure
        assert f'href="#fig-{name}"' in html_text and f"fig-{name}" in page.figures


def test_the_findings_of_the_report_can_be_compared(report: Path):
    path = report / "report.md"
    bullets = findings.masked(path.read_text())
    assert len(bullets) >= 5
    same = findings.compare_files(path, path)
    assert len(same.kept) == len(bullets) and not same.changed and not same.only_first


def _strings(tree: ast.AST) -> list[str]:
    """The string constants of a module, f-strings' literal parts included, docstrings left out."""
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_document_writes_no_markup_by_hand():
    """No HTML tag, Markdown link, image, heading, bullet or table row is spelled in document.py: they live in
    templates/, and markdown-it writes the HTML."""
    markup = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*[\s>/]|\]\(|!\[|^#{1,6} |^\s*- |^\|.*\|$|\|---", re.MULTILINE)
    for source in SOURCES:
        found = [s for s in _strings(ast.parse(source.read_text())) if markup.search(s)]
        assert not found, f"markup spelled in {source.name}: {found}"
    assert {"report.md.j2", "findings.md.j2", "macros.md.j2", "index.html.j2"} <= {p.name for p in
                                                                                    TEMPLATES.glob("*.j2")}


def test_every_kind_of_bullet_has_its_macro():
    """A finding or note document.py emits names a macro of templates/findings.md.j2."""
    template = (TEMPLATES / "findings.md.j2").read_text()
    macros = set(re.findall(r"\{% macro (\w+)\(", template))
    kinds = {kind for source in SOURCES
             for kind in re.findall(r"[\"']kind[\"']: [\"'](\w+)[\"']", source.read_text())}
    assert kinds and kinds <= macros, kinds - macros
