"""The house rules that can be counted (scripts/check_structure.py): no import cycle, no file
in src over 500 lines, no function over 60."""

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_structure.py"


def test_no_import_cycle_long_file_or_long_function(capsys):
    rules = runpy.run_path(str(SCRIPT))
    assert rules["main"]() == 0, capsys.readouterr().out
