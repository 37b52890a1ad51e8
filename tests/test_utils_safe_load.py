"""dnnlab.utils.safe_load: every .pt is loaded with weights_only=True in one place,
each refusal says why in dnnlab's words, and no message (dnnlab's or a library's passed
on) advises loading unsafely."""

import pytest

from dnnlab.errors import InputError
from tests.fakes import REASON, UNSAFE_ADVICE, bad_pt, unsafe_words


# -- every refused .pt explained, never "weights_only=False will likely succeed" ------
@pytest.mark.parametrize("kind", sorted(REASON))
def test_every_plain_load_names_its_reason(tmp_path, kind):
    from dnnlab.cifar.rundir import RunError, load_checkpoint
    from dnnlab.detect.detector import Detector
    from dnnlab.probe.anymodel import load_state

    p = bad_pt(tmp_path, kind)
    (tmp_path / "model.pt").write_bytes(p.read_bytes())
    for load, err in (
        (lambda: load_checkpoint(p), RunError),
        (lambda: load_state(str(p), None), InputError),
        (lambda: Detector.load(tmp_path), InputError),
    ):
        with pytest.raises(err) as e:
            load()
        assert REASON[kind] in str(e.value) and "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_torch_load_only_in_safe_load():
    """Every .pt file dnnlab reads goes through utils.safe_load.load_plain."""
    from pathlib import Path

    import dnnlab

    src = Path(dnnlab.__file__).parent
    calls = [
        str(f.relative_to(src))
        for f in src.rglob("*.py")
        if "torch.load(" in f.read_text().replace("`torch.load(", "")
        and f.name != "safe_load.py"
        and "loads with torch.load(" not in f.read_text()
    ]
    assert calls == []


def message_texts(tree) -> list[str]:
    """The text of every message a module can show: the string parts of what it raises,
    prints or warns, and of every error it makes (a call of a name ending in Error), with
    f-strings' literal parts; each once."""
    import ast

    shown = {}
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        name = getattr(func, "id", None) or getattr(func, "attr", None) or ""
        if isinstance(node, ast.Raise) or name in ("print", "warn") or name.endswith("Error"):
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    shown[(c.lineno, c.col_offset)] = c.value
    return list(shown.values())


def test_no_message_advises_an_unsafe_load():
    """No text dnnlab raises, prints or warns tells the user to load unsafely (torch's
    weights_only=False, numpy's allow_pickle=True, ...): a refusal says why in dnnlab's
    words. Libraries' messages passed on are filtered (safe_load.without_unsafe_advice,
    load_error_reason: the test below and the si and probe refusals of pickles run them)."""
    import ast
    from pathlib import Path

    import dnnlab

    src = Path(dnnlab.__file__).parent
    found = [
        (str(f.relative_to(src)), text)
        for f in sorted(src.rglob("*.py"))
        for text in message_texts(ast.parse(f.read_text()))
        if any(w in text.lower().replace(" ", "") for w in UNSAFE_ADVICE)
    ]
    assert found == []
    # The scan finds such advice where it is: a message made to hold it is caught.
    planted = 'raise InputError(f"{p}: retry with weights_only=False")'
    assert message_texts(ast.parse(planted)) == [": retry with weights_only=False"]


# -- no message tells the user to load unsafely ------------------------------------------
def test_a_librarys_advice_to_load_unsafely_is_never_passed_on():
    from dnnlab.utils.safe_load import without_unsafe_advice

    text = (
        "weights_only=True blocked loading this checkpoint because it requires "
        "non-allowlisted pickle globals. Unsupported globals: builtins.print. No automatic "
        "unsafe pickle fallback is performed. If this checkpoint is trusted, retry with "
        "weights_only=False."
    )
    kept = without_unsafe_advice(text)
    assert kept == "Unsupported globals: builtins.print" and unsafe_words(kept) == []


def test_a_long_library_message_is_cut_at_a_clause_with_its_parentheses_closed():
    from dnnlab.utils.safe_load import load_error_reason

    text = (
        "PytorchStreamReader failed reading zip archive: failed finding central directory "
        "(this is a known issue: " + "it is likely that your checkpoint file is " * 8 + "cut)"
    )
    reason = load_error_reason(RuntimeError(text))
    assert "failed finding central directory ..." in reason
    assert reason.count("(") == reason.count(")")
