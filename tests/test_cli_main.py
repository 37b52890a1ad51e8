"""main(): dnnlab's own errors are one line and exit 2; anything else keeps its traceback."""

import pytest

import dnnlab.cifar.models as models
import dnnlab.cifar.train as train
import dnnlab.cli as cli
from dnnlab.errors import ConfigError


def raiser(exc):
    def cmd(args):
        raise exc

    return cmd


def test_own_errors_are_short(monkeypatch, capsys):
    monkeypatch.setattr(models, "main", raiser(ConfigError("--x: 3 is out of range")))
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == "dnnlab models: error: --x: 3 is out of range\n"


@pytest.mark.parametrize("exc", [TypeError("a bug"), RuntimeError("a bug"), ValueError("bug")])
def test_other_errors_keep_their_traceback(monkeypatch, exc):
    monkeypatch.setattr(models, "main", raiser(exc))
    with pytest.raises(type(exc)):
        cli.main(["models"])


def test_version(capsys):
    from dnnlab import __version__

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"dnnlab {__version__}\n"


def test_ctrl_c_suggests_resume_only_where_it_exists(monkeypatch, capsys):
    monkeypatch.setattr(models, "main", raiser(KeyboardInterrupt()))
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "dnnlab models: interrupted\n"
    monkeypatch.setattr(train, "main", raiser(KeyboardInterrupt()))
    assert cli.main(["train", "--out", "x"]) == 130
    assert "rerun with --resume" in capsys.readouterr().err


# -- no leftovers, no small lies ------------------------------------------------------
def test_a_python_warning_is_one_line_without_a_source_path(tmp_path, capsys, monkeypatch):
    import warnings

    def warns(args):
        warnings.warn("a library's remark\nwith a second line", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(models, "main", warns)
    assert cli.main(["models"]) == 0
    err = capsys.readouterr().err
    assert err == "dnnlab models: warning: a library's remark\n", err
