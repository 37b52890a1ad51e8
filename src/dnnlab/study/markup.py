"""The pieces report.md and report.html are built of: numbers as the tables show them,
Markdown and HTML tables from the same rows, and images embedded in the page."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def num(v):
    return "–" if v is None else f"{v:.4f}"


def md_grid(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_grid(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'
