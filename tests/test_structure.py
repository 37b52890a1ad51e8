"""The house rules that can be counted (scripts/check_structure.py): no import cycle, no
import inside a function without its measured reason beside it; and no test module imports
another (what tests share lives in tests/conftest.py, fakes.py and oracle.py)."""

import ast
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_structure.py"
TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_house_rules_hold(capsys):
    rules = runpy.run_path(str(SCRIPT))
    assert rules["main"]() == 0, capsys.readouterr().out


def test_an_unexplained_lazy_import_is_found(tmp_path):
    """Only the import with no reason beside it (comment above, or docstring) is named."""
    unexplained = runpy.run_path(str(SCRIPT))["unexplained_imports"]
    unexplained.__globals__["ROOT"] = tmp_path  # paths are named relative to ROOT
    f = tmp_path / "m.py"
    f.write_text(
        "def a():\n    import json\n\n\n"
        "def b():\n    # lazy: see benchmarks/lazy_imports.py\n    import csv\n\n\n"
        'def c():\n    """Imported here (benchmarks/lazy_imports.py)."""\n    import os\n'
    )
    assert unexplained(f, ast.parse(f.read_text())) == ["m.py:2 import json"]


def test_one_hash_and_one_json_reader():
    """Issue 37: every identity is records.content_hash and every file checksum
    records.file_sha256, through the one call of hashlib.sha256; every record the tool wrote is
    read back through records.read_json (json.loads appears only there)."""
    src = ROOT / "src" / "dnnlab"
    sha, loads = [], []
    for f in sorted(src.rglob("*.py")):
        text = f.read_text()
        sha += [f.relative_to(src).as_posix()] * text.count("hashlib.sha256(")
        loads += [f.relative_to(src).as_posix()] * text.count("json.loads(")
    assert sha == ["utils/records.py"]
    # rundir's json.loads(json.dumps(v)) normalizes a value for comparison; it reads no file.
    assert sorted(loads) == ["cifar/rundir.py", "utils/records.py"]


def imported_test_modules(tree: ast.Module) -> list[str]:
    """The test modules (tests.test_*, .test_*, test_*) a module's source imports, at any
    depth, by any form; a library's name that starts with test_ is not one."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names, relative = [a.name for a in node.names], False
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
            relative = node.level > 0
        else:
            continue
        for name in names:
            parts = name.split(".")
            ours = relative or parts[0] == "tests" or parts[0].startswith("test_")
            at = next((i for i, q in enumerate(parts) if q.startswith("test_")), None)
            if ours and at is not None:
                found.add(".".join(parts[: at + 1]))
    return sorted(found)


def test_no_test_module_imports_another():
    found = {
        f.name: imported_test_modules(ast.parse(f.read_text())) for f in sorted(TESTS.glob("*.py"))
    }
    assert {name: mods for name, mods in found.items() if mods} == {}
    # The scan finds each form of such an import, and no library name that starts with test_.
    planted = (
        "from tests.test_a import x\nimport tests.test_b\nfrom .test_c import y\n"
        "from tests import test_d\ndef f():\n    from tests.test_e import z\n"
        "import test_f\nfrom dnnlab.cifar.data import test_positions\n"
    )
    got = imported_test_modules(ast.parse(planted))
    want = ["test_c", "test_f", "tests.test_a", "tests.test_b", "tests.test_d", "tests.test_e"]
    assert got == want
