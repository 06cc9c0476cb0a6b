"""The report's words and HTML: number formatting, the Jinja2 environment over ``templates/`` (report.md), and
markdown-it's rendering of report.md as one self-contained index.html; ``main_words`` counts what a reader sees
without opening a fold.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import markupsafe
from markdown_it import MarkdownIt
from markdown_it.token import Token

from study import analysis, answers
from study import claims as checks
from study.analysis import REFERENCE
from study.figures import DISPLAY_WIDTH


def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _estimate(row: dict | None, number: Callable[[float], str], low: float = -math.inf, high: float = math.inf
              ) -> str:
    """A mean and its t-interval (clipped to [low, high]), each written by ``number``; the mean and its seed count
    without an interval; '–' without a value."""
    if row is None or not math.isfinite(row["mean"]):
        return "–"
    if not (math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"])):
        return f"{number(row['mean'])} ({int(row['n'])} seed)"
    return f"{number(row['mean'])} [{number(max(row['ci_low'], low))}, {number(min(row['ci_high'], high))}]"


def fmt_estimate(row: dict | None, digits: int = 3) -> str:
    """'0.853 [0.849, 0.857]'; '0.853 (1 seed)' without an interval; '–' without a value."""
    return _estimate(row, lambda v: f"{v:.{digits}f}")


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def fmt_difference(row: dict | None, digits: int = 3, unit: str = "", percent: bool = False,
                   word: bool = True, holm: bool = True) -> str:
    """'+0.012 [-0.003, +0.027], p=0.09, Holm p=0.27, not established with 5 seeds'; ``unit`` follows the mean
    ('+5 steps [...]'); ``percent`` writes shares as percentage points; ``word=False`` leaves out the verdict and
    ``holm=False`` the Holm-adjusted p (for a table or list that gives them in their own place)."""
    if row is None or not math.isfinite(row["diff"]):
        return "–"

    def number(x: float) -> str:
        if percent:  # a difference of two shares lies in [-100, +100] pp, whatever a t-interval says
            x = min(max(100 * x, -100.0), 100.0)
        return f"{round(x, 1 if percent else digits) + 0.0:+.{1 if percent else digits}f}"  # + 0.0: no "-0"

    unit = " pp" if percent else (f" {unit}" if unit else "")
    text = number(row["diff"]) + unit
    if row["evidence"] is None:
        return text + f" ({int(row['n'])} pair, no interval)"
    text += f" [{number(row['ci_low'])}, {number(row['ci_high'])}], {fmt_p(row['p_value'])}"
    p_holm = row.get("p_holm", math.nan)
    if holm and isinstance(p_holm, float) and math.isfinite(p_holm):
        text += f", Holm p {answers.fmt_holm(p_holm, int(row['n']))}"
    if not word or row["evidence"] == analysis.DIFFERENT:
        return text
    return text + f", {row['evidence']} with {int(row['n'])} seeds"


def fmt_steps(row: dict | None) -> str:
    """Median steps over seeds, how many seeds reached the target and the widest bracket of a crossing as a share
    of its step, e.g. '450 (5/5 reached, ±4%)'."""
    if row is None:
        return "–"
    median = "not reached" if not math.isfinite(row["median"]) else f"{row['median']:.0f}"
    resolution = row.get("resolution", math.nan)
    within = f", ±{100 * resolution:.0f}%" if isinstance(resolution, float) and math.isfinite(resolution) else ""
    return f"{median} ({int(row['n_reached'])}/{int(row['n'])} reached{within})"


def fmt_percent(row: dict | None) -> str:
    """A share as '12.5% [10.1%, 14.9%]'; the t-interval is clipped to [0%, 100%]."""
    return _estimate(row, lambda v: f"{v:.1%}", 0.0, 1.0)


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text.strip().lower()))


def _cell(text: object) -> str:
    """A table cell's text: a pipe would end the cell, a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _join(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("study", "templates"), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False))
    env.filters.update({"num": format, "each": lambda values, spec: [spec.format(v) for v in values],
                        "cell": _cell, "join_and": _join, "estimate": fmt_estimate, "difference": fmt_difference,
                        "steps": fmt_steps, "percent": fmt_percent, "p": fmt_p, "holm": answers.fmt_holm})
    env.globals.update({"reference": REFERENCE, "alpha": analysis.ALPHA, "saturation": analysis.SATURATION,
                        "replication": analysis.REPLICATION, "evidence_bounds": analysis.evidence_bounds,
                        "verdict_rule": checks.VERDICT_RULE, "effect_range": answers.effect_range,
                        "compact": answers.compact, "words_equivalent": answers.EQUIVALENT})
    return env


def _fold(text: str) -> str:
    """Blocks apart by exactly one blank line, one newline at the end (the templates' own spacing varies)."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_markdown(values: dict) -> str:
    return _fold(_environment().get_template("report.md.j2").render(values))


def render_bullets(items: Sequence[dict]) -> list[str]:
    """Each finding or note as the one line of Markdown its macro writes (what a bullet of report.md says)."""
    say = _environment().get_template("findings.md.j2").module
    return [str(getattr(say, item["kind"])(item)) for item in items]


def _markdown_parser(figures: Path) -> MarkdownIt:
    """CommonMark with tables, where a heading gets its slug as id, a link to figures/<name>.png points at the
    figure's id ``fig-<name>``, and a figure (see the ``figure`` macro) becomes one <figure> with its image inlined."""
    # HTML blocks only (the folds' <details> lines); inline text that looks like a tag stays text.
    parser = MarkdownIt("commonmark", {"html": True}).enable("table").disable("html_inline")

    def anchors(state) -> None:
        tokens = state.tokens
        for i, token in enumerate(tokens):
            if token.type == "heading_open":
                token.attrSet("id", slug(tokens[i + 1].content))
            elif token.type == "inline":
                for child in token.children or []:
                    href = str(child.attrGet("href") or "")
                    if child.type == "link_open" and href.startswith("figures/"):
                        child.attrSet("href", f"#fig-{Path(href).stem}")
                image = token.children[0] if token.children and len(token.children) == 1 else None
                if image is not None and image.type == "image" and str(image.attrGet("src")).startswith("figures/"):
                    _as_figure(tokens, i, figures)

    parser.core.ruler.push("anchors", anchors)
    return parser


TEXT_PX = re.compile(r"smallest text ([0-9.]+) px")  # the figure macro's image title


def _as_figure(tokens: list[Token], i: int, figures: Path) -> None:
    """Tokens ``i - 1 .. i + 4`` are the figure macro's two paragraphs, the image and its caption: make them
    <figure id="fig-<name>"><a href="figures/<name>.png"><img src="data:..."></a><figcaption>...</figcaption>
    </figure>. The link opens the PNG at full size; the image's title (its smallest text at full size, in px)
    becomes the attribute data-min-text-px, for a browser to compare with the width it displays."""
    image = tokens[i].children[0]
    src = str(image.attrGet("src"))
    name = Path(src).stem
    image.attrSet("src", "data:image/png;base64," + base64.b64encode((figures / f"{name}.png").read_bytes()).decode())
    title = TEXT_PX.search(str(image.attrGet("title") or ""))
    if image.attrs and "title" in image.attrs:
        del image.attrs["title"]
    if title:
        image.attrSet("data-min-text-px", title[1])
    link_open, link_close = Token("link_open", "a", 1), Token("link_close", "a", -1)
    link_open.attrSet("href", src)
    tokens[i].children = [link_open, image, link_close]
    image_open, image_close, caption_open, caption, caption_close = tokens[i - 1], *tokens[i + 1:i + 5]
    image_open.tag, image_close.hidden = "figure", True
    image_open.attrSet("id", f"fig-{name}")
    caption_open.tag = caption_close.tag = "figcaption"
    caption.children = [c for c in caption.children if c.type not in ("em_open", "em_close")]
    tokens.insert(i + 5, Token("figure_close", "figure", -1, block=True))


def main_words(html_text: str) -> int:
    """The words a reader sees without opening a fold: the text of index.html's body outside <details> blocks
    (their <summary> lines count), tables and captions included, styles and image data left out."""
    counter = _WordCounter()
    counter.feed(html_text)
    return counter.words


class _WordCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.words = 0
        self._details = 0  # nesting depth of <details>
        self._summary = False
        self._skip = 0  # inside <style>, <script> or <title>

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self._details += 1
        elif tag == "summary":
            self._summary = True
        elif tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        elif tag == "summary":
            self._summary = False
        elif tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and (self._details == 0 or (self._details == 1 and self._summary)):
            self.words += len(data.split())


def render_html(markdown: str, figures: Path, title: str) -> str:
    """report.md as one HTML file with every figure inlined (opens from disk, nothing else needed)."""
    body = _markdown_parser(figures).render(markdown)
    return _environment().get_template("index.html.j2").render(title=title, body=markupsafe.Markup(body),
                                                                display_width=DISPLAY_WIDTH)


def render_answer(kind: str, values: dict) -> str:
    """One answer's sentences (``kind``: speed, gradients or penalty) as report.md words them."""
    return str(getattr(_environment().get_template("answers.md.j2").module, kind)(values)).strip()

