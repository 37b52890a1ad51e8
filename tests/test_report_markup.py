"""The report is written once, in Markdown, and report.html is rendered from it: text from
records shows as that text wherever it stands, and the page shows what report.md says."""

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from PIL import Image

from dnnlab.study.markup import md_code, md_text
from dnnlab.study.report import write_report
from tests.page_oracle import assert_page_says_what_markdown_says, read_page, words

RENDER = MarkdownIt("commonmark", {"html": False}).enable("table")
# Any text a record may hold: letters, digits, punctuation (every Markdown character),
# spaces, tabs and line breaks; no other control characters.
ANY_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t\n\r")
    | st.sampled_from(list("\\`*_[]<>&|#~!()-+=.:1 ")),
    max_size=30,
)
# ... and text that starts as a block would: a list item, a heading, a quote, a rule.
TEXT = st.tuples(
    st.sampled_from(["", "1. ", " 12) ", "- ", "+", "=", "***", "# ", "> "]), ANY_TEXT
).map("".join)


def shown(markdown: str) -> dict:
    return read_page(RENDER.render(markdown))[0]


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_md_text_shows_the_text_wherever_it_stands(text):
    want = words(text)
    assert shown(f"x {md_text(text)} y")["paragraphs"] == [words(f"x {text} y")]
    assert shown(f"- {md_text(text)}")["items"] == ([want] if want else [])
    assert shown(f"### {md_text(text)}")["headings"] == [(3, want)]
    table = shown(f"| a | b |\n|---|---|\n| {md_text(text)} | c |")["tables"]
    assert table == [[["a", "b"], [want, "c"]]]
    [(alt, src)] = shown(f"![{md_text(text)}](x.png)")["images"]
    assert words(alt) == want and src == "x.png"


@settings(max_examples=300, deadline=None)
@given(TEXT.filter(lambda t: t.strip("\r\n")))
def test_md_code_shows_the_text_as_code(text):
    code = RENDER.parse(f"x {md_code(text)} y")[1].children
    assert [t.type for t in code] == ["text", "code_inline", "text"]
    assert code[1].content == re.sub(r"[\r\n]+", " ", text)  # a line break shows as a space


def test_report_page_is_rendered_from_its_markdown(tmp_path):
    """Run names, a device name and the reason a run is left out, full of Markdown and HTML,
    show as text in the page's headings, table cells, image alt texts and paragraphs; every
    table, heading, list item and paragraph of report.md is in the page, and every image it
    links is embedded from its file."""
    out = tmp_path / "s"
    evil = "a|b_ *c* <script>alert(1)"  # kept: in the tables, a heading and alt texts
    left_out = "[x](y) `z` &amp; 1. -"  # its records do not match: named as code
    record = dict(models=["base"], quick=True, train_subset=60, epochs=1, n_val=20)
    record.update(test_subset=30, max_per_split=40, measures="si", runs=[evil, left_out])
    record.update(device_name="GPU **fast** <i>x</i> _y_")
    (out / "runs").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(record))
    config = dict(model=evil, seed=0, epochs=1, n_val=20, train_subset=60, test_subset=30)
    for name, model in ((evil, evil), (left_out, "<b>bold</b>")):
        run = out / "runs" / name
        (run / "whole-splits").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({**config, "model": model}))
        summary = dict(recipe="corrected", epochs=1, test_acc=0.5, best_val_acc=0.25)
        (run / "summary.json").write_text(json.dumps(summary))
        rows = [
            dict(split=s, layer=layer, si=0.5, csi=0.25, n=20)
            for s in ("val", "test")
            for layer in ("avgpool", "fc1", "fc2")
        ]
        (run / "whole-splits" / "probe.json").write_text(json.dumps({"rows": rows}))
        Image.new("RGB", (4, 4), (9, 99, 199)).save(run / "curves.png")
    photo = tmp_path / "det" / "photos" / "cat [1] & *2*.jpg"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(photo)
    write_report(out, [("Cat detector", "| metric | value |\n|---|---|\n| AP50 | 0.9 |", [photo])])
    page = assert_page_says_what_markdown_says(out)
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "<b>bold" not in html and "<i>x" not in html
    assert (3, evil) in page["headings"]
    last_layers = next(
        t for t in page["tables"] if t[0][:4] == ["Model", "Seeds", "split", "layer"]
    )
    assert [r[0] for r in last_layers[1:]] == [evil] * 6
    assert [["metric", "value"], ["AP50", "0.9"]] in page["tables"]
    assert page["images"][0][0] == f"{evil} curves"
    assert page["images"][-1][0] == "cat [1] & *2*"
    assert any("Device: GPU **fast** <i>x</i> _y_." in p for p in page["paragraphs"])
    assert any(
        f"Left out of the tables: {left_out}: its records do not match the study "
        "(model='<b>bold</b>' (study: '[x](y) `z` &amp; 1. -'))." in p
        for p in page["paragraphs"]
    )
