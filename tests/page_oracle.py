"""An independent reading of a report: what report.md says (its tables' cells, headings, list
items, paragraphs and images, read line by line with obvious code) against what report.html
shows (read with html.parser). The page is rendered from the Markdown, so the two must say
the same."""

import base64
import re
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

# CommonMark's backslash escapes: a backslash before ASCII punctuation.
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
_IMAGE = re.compile(r"!\[((?:\\.|[^\\\]])*)\]\(([^)\s]*)\)")
_CODE = re.compile(r"(?<![\\`])(`+)(.+?)(?<!`)\1(?!`)")  # a code span (not \` )


def words(text: str) -> str:
    return " ".join(text.split())


def inline_text(md: str) -> str:
    """The text a line of Markdown shows: code spans as they are, escapes undone, images
    left out (they are compared on their own)."""
    md = _IMAGE.sub("", md)
    parts, at = [], 0
    for m in _CODE.finditer(md):
        parts.append(_ESCAPED.sub(r"\1", md[at : m.start()]))
        code = m.group(2)
        parts.append(code[1:-1] if code[:1] == code[-1:] == " " and code.strip() else code)
        at = m.end()
    return words("".join(parts) + _ESCAPED.sub(r"\1", md[at:]))


def table_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [inline_text(c) for c in cells]


def read_markdown(text: str) -> dict:
    got = {"tables": [], "headings": [], "items": [], "paragraphs": [], "images": []}
    lines = text.split("\n")
    para: list[str] = []

    def end_paragraph():
        if para and inline_text(" ".join(para)):
            got["paragraphs"].append(inline_text(" ".join(para)))
        para.clear()

    for i, line in enumerate(lines):
        got["images"] += [(_ESCAPED.sub(r"\1", a), link) for a, link in _IMAGE.findall(line)]
        if line.startswith("|"):
            end_paragraph()
            if not lines[i - 1].startswith("|"):  # a table's head
                got["tables"].append([table_cells(line)])
            elif not re.fullmatch(r"\|(---\|)+", line):
                got["tables"][-1].append(table_cells(line))
        elif m := re.match(r"(#{1,6}) (.*)", line):
            end_paragraph()
            got["headings"].append((len(m.group(1)), inline_text(m.group(2))))
        elif line.startswith("- "):
            end_paragraph()
            got["items"].append(inline_text(line[2:]))
        elif line.strip():
            para.append(line)
        else:
            end_paragraph()
    end_paragraph()
    return got


class _Page(HTMLParser):
    BLOCKS = {"p": "paragraphs", "li": "items", "td": None, "th": None}

    def __init__(self):
        super().__init__()
        self.got = {"tables": [], "headings": [], "items": [], "paragraphs": [], "images": []}
        self.scripts = 0
        self.text = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.got["tables"].append([])
        elif tag == "tr":
            self.got["tables"][-1].append([])
        elif tag == "img":
            self.got["images"].append((a.get("alt"), a.get("src")))
        elif tag == "script":
            self.scripts += 1
        if tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.text = ""

    def handle_endtag(self, tag):
        if self.text is None:
            return
        text = words(self.text)
        if tag in ("td", "th"):
            self.got["tables"][-1][-1].append(text)
        elif tag in self.BLOCKS and text:
            self.got[self.BLOCKS[tag]].append(text)
        elif re.fullmatch(r"h[1-6]", tag):
            self.got["headings"].append((int(tag[1]), text))
        else:
            return
        self.text = None

    def handle_data(self, data):
        if self.text is not None:
            self.text += data


def read_page(html: str) -> tuple[dict, int]:
    """What the page shows, and how many <script> elements it has."""
    p = _Page()
    p.feed(html)
    return p.got, p.scripts


def assert_page_says_what_markdown_says(folder: Path) -> dict:
    """report.html of `folder` shows report.md's tables cell for cell, its headings, list
    items and paragraphs word for word, and each image it links embedded as a data: URI of
    that file's bytes; its one script is the self-check. Returns what the page shows."""
    md = read_markdown((folder / "report.md").read_text(encoding="utf-8"))
    page, scripts = read_page((folder / "report.html").read_text(encoding="utf-8"))
    assert scripts == 1
    for key in ("tables", "headings", "items", "paragraphs"):
        assert page[key] == md[key], key
    assert len(page["images"]) == len(md["images"])
    for (alt, src), (md_alt, link) in zip(page["images"], md["images"], strict=True):
        path = folder / urllib.parse.unquote(link)
        mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        assert alt == md_alt
        assert src == f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    return page
