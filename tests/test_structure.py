"""The house rules that can be counted (scripts/check_structure.py): no import cycle, no
import inside a function without its measured reason beside it."""

import ast
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_structure.py"


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
