"""report.md and the report.html rendered from it: numbers as the tables show them, the
Markdown of tables, text and images, and the self-contained page (markdown-it-py renders
the Markdown; each image it links is embedded as a data: URI).

The report is written once, in Markdown; the page shows exactly what report.md says.
Text the report does not write itself (run names, paths, what a record holds) goes through
md_text or md_code, so that it shows as the same text on the page and no character of it
becomes markup."""

from __future__ import annotations

import base64
import html
import re
import urllib.parse
from pathlib import Path

from markdown_it import MarkdownIt


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def num(v):
    return "–" if v is None else f"{v:.4f}"


def md_grid(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; the cells are Markdown (text from records through md_text)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# Characters that are markup wherever they stand in a line (CommonMark's inlines, and '|'
# which ends a table cell); '#' closes a heading; '~' is strikethrough in other presets.
_INLINE = re.compile(r"[\\`*\[\]<>&|#~]")
# '_' is emphasis unless it stands inside a word (a_b: CommonMark never reads that as
# emphasis); \w less '_' is a letter or digit.
_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
# What starts a block when a line (a list item's text, a table cell's) starts with it: a
# list ('-', '+', '1.', '1)'), a setext underline ('='); '*', '#', '>' are escaped anyway.
_BLOCK_START = re.compile(r"[ \t]*(?:[-+=]|\d+(?=[.)](?:[ \t]|$)))")


def md_text(text) -> str:
    """`text` (any value, shown with str) as Markdown that renders as that text, in a
    paragraph, a heading, a list item, a table cell or an image's alt text: each markup
    character gets a backslash, '_' only where it could be emphasis (so file names keep
    their usual spelling), a list marker only at the start; a line break becomes a space
    (it could start a block)."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    text = _UNDERSCORE.sub(r"\\_", _INLINE.sub(lambda m: "\\" + m.group(), text))
    start = _BLOCK_START.match(text)
    if start:
        at = start.end() if text[start.end() - 1].isdigit() else start.end() - 1
        text = text[:at] + "\\" + text[at:]
    return text


def md_code(text) -> str:
    """`text` (not empty) as a Markdown code span, outside a table: its fence is one
    backtick longer than the longest run of backticks inside (a code span has no escapes),
    padded by a space each side where CommonMark would otherwise take one off or read the
    fence wrong; line breaks become a space."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    fence = "`" * (1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    ends = text[:1] + text[-1:]
    pad = " " if "`" in ends or (ends == "  " and text.strip(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_link(path: str) -> str:
    """A relative path as a Markdown link target, percent-encoded: a link ends at a space or
    a ')' ('cat (1).jpg'). md_page reads it back with urllib.parse.unquote."""
    return urllib.parse.quote(path)


SELF_CHECK = """<script>
window.addEventListener('load', function () {
  var bad = [];
  document.querySelectorAll('img').forEach(function (im) {
    if (!(im.complete && im.naturalWidth > 0 && im.getBoundingClientRect().height > 0))
      bad.push('image ' + im.alt);
  });
  document.querySelectorAll('table').forEach(function (t, i) {
    if (t.getBoundingClientRect().height <= 0) bad.push('table ' + i);
  });
  document.body.setAttribute('data-check', bad.length ? 'FAILED: ' + bad.join('; ') :
    'ok ' + document.images.length + ' images ' +
    document.querySelectorAll('table').length + ' tables');
});
</script>"""


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}
img{max-width:100%;display:block;margin:0.5em 0}"""


def md_page(markdown: str, folder: Path, title: str = "dnnlab study") -> str:
    """The self-contained HTML page of the Markdown `markdown` (report.md's text): CommonMark
    with tables, raw HTML shown as text; each image is read from its link, relative to
    `folder` (where report.md is), and embedded as a data: URI."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for block in tokens:
        for tok in block.children or []:
            if tok.type == "image":
                path = Path(folder) / urllib.parse.unquote(tok.attrs["src"])
                mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
                data = base64.b64encode(path.read_bytes()).decode()
                tok.attrSet("src", f"data:{mime};base64,{data}")
    body = md.renderer.render(tokens, md.options, {})
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}{SELF_CHECK}</body></html>"
    )
