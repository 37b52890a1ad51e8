"""Follow the study's epochs setting through every call that passes it on (issue 21).

Runs a tiny study (fake CIFAR-10 tree, base and bn, one process, the plan printed) under a
profiler. Starting from run_study's config, it follows each call into dnnlab (the
dataclasses' generated __init__ included) whose arguments carry epochs: a parameter named
`epochs`, an object with an `epochs` attribute (StudyConfig, TrainConfig, ...), a dict with
an "epochs" key, an object or dict or closure holding one of those; or whose closure
captured one. A call through code outside dnnlab (dataclasses.replace, a context manager)
is followed to the dnnlab function it reaches, counted from the dnnlab caller. Calls reached
only through a copy read back from disk (a run's config.json) start no chain. Prints:

- hand-overs: distinct call sites (caller file:line -> callee) that pass it on;
- returns: those hand-overs into a module that held it earlier in the same call chain,
  from another module (A -> B -> A);
- calls that give back a value holding it (a config, a record) to a caller in another
  module: the other way the setting can come back to a module it had left;
- the modules it reaches.

    python scripts/trace_setting.py [--list]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.fakes import make_image_tree  # noqa: E402

from dnnlab.study.config import study_config  # noqa: E402
from dnnlab.study.study import run_study  # noqa: E402

PACKAGE = str(ROOT / "src" / "dnnlab")


def carries_epochs(value, depth: int = 1, seen: frozenset = frozenset()) -> bool:
    """Whether `value` holds epochs: a dict key or an attribute, or (to `depth` levels) an
    attribute or dict value that holds it (a plan holding the run's config)."""
    if id(value) in seen:  # a closure that holds itself
        return False
    seen = seen | {id(value)}
    if isinstance(value, dict):
        inner = list(value.values())
        if "epochs" in value:
            return True
    elif callable(value) and isinstance(getattr(value, "__closure__", None), tuple):
        # A closure passed on: what it captured.
        cells = [c.cell_contents for c in value.__closure__ if _filled(c)]
        return any(carries_epochs(v, depth, seen) for v in cells)
    elif isinstance(value, type) or not hasattr(value, "__dict__"):
        return False
    else:
        inner = list(vars(value).values())
        if "epochs" in vars(value):
            return True
    return depth > 0 and any(carries_epochs(v, depth - 1, seen) for v in inner)


def _filled(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def holds_setting(frame) -> bool:
    """Whether the call's arguments, or the variables a closure captured, carry epochs."""
    code = frame.f_code
    n = code.co_argcount + code.co_kwonlyargcount
    names = code.co_varnames[:n] + code.co_freevars
    local = frame.f_locals
    for name in names:
        if name == "epochs" or (name in local and carries_epochs(local[name])):
            return True
    return False


def is_inline(frame) -> bool:
    """A comprehension or generator expression: part of its caller, not a hand-over."""
    return frame.f_code.co_name in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def generated(frame) -> bool:
    """A method dataclasses wrote (its __init__): code in "<string>", of a dnnlab class."""
    me = frame.f_locals.get("self")
    return frame.f_code.co_filename == "<string>" and type(me).__module__.startswith("dnnlab")


def module_of(frame) -> str:
    if generated(frame):
        return sys.modules[type(frame.f_locals["self"]).__module__].__file__.removeprefix(
            PACKAGE + "/"
        )
    return frame.f_code.co_filename.removeprefix(PACKAGE + "/")


def name_of(frame) -> str:
    if generated(frame):
        return f"{type(frame.f_locals['self']).__name__}.{frame.f_code.co_name}"
    return frame.f_code.co_qualname


def trace_study(workdir: Path):
    """(hand-overs, returns): {(caller site, callee): chain of modules} for a tiny study."""
    tree = make_image_tree(workdir / "cifar", n_train=14, n_test=5)
    cfg = study_config(["base", "bn"], quick=True, data_root=str(tree))
    cfg = replace(cfg, train_subset=60, epochs=1, n_val=20, test_subset=30, max_per_split=40)
    handovers, returns, passed_back = {}, {}, {}
    chains = {}  # frame id -> modules that held the setting on the way to this frame
    sites = {}  # frame id outside dnnlab -> the dnnlab call site it was called from

    def where(frame) -> str:
        return f"{module_of(frame)}:{frame.f_lineno} {name_of(frame)}"

    def profile(frame, event, arg):
        if event == "return":
            held = chains.pop(id(frame), None)  # a frame's id may be reused once it is gone
            sites.pop(id(frame), None)
            caller = frame.f_back
            if held and frame.f_code.co_filename.startswith(PACKAGE) and caller is not None:
                if not is_inline(frame) and carries_epochs(arg):
                    back = sites.get(id(caller)) or where(caller)
                    if back.split(":")[0] != module_of(frame) and caller is not root:
                        passed_back.setdefault((f"{module_of(frame)} {name_of(frame)}", back), 1)
            return
        if event != "call":
            return
        caller = frame.f_back
        if caller is None or id(caller) not in chains:
            return
        if not (frame.f_code.co_filename.startswith(PACKAGE) or generated(frame)):
            # Outside dnnlab (dataclasses.replace, contextlib...): no hand-over of its own,
            # but what it calls in dnnlab with the setting is one, from the dnnlab caller.
            if holds_setting(frame) and not is_inline(frame):
                chains[id(frame)] = chains[id(caller)]
                sites[id(frame)] = sites.get(id(caller)) or where(caller)
            return
        if is_inline(frame):
            chains[id(frame)] = chains[id(caller)]
            return
        if not holds_setting(frame):
            return
        if caller is root:  # run_study itself: where the setting starts
            chains[id(frame)] = ["study/study.py"]
            return
        held = chains[id(caller)]
        site = sites.get(id(caller)) or where(caller)
        key = (site, f"{module_of(frame)} {name_of(frame)}")
        here = module_of(frame)
        handovers.setdefault(key, held + [here])
        if here != held[-1] and here in held:
            returns.setdefault(key, held + [here])
        chains[id(frame)] = held + [here]

    root = inspect.currentframe()
    chains[id(root)] = []
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        run_study(cfg, workdir / "study", log=lambda *_: None, plan=True)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return handovers, returns, passed_back


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list every hand-over and return")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        handovers, returns, passed_back = trace_study(Path(tmp))
    modules = sorted({k[1].split()[0] for k in handovers})
    if args.list:
        for (site, callee), chain in handovers.items():
            mark = "RETURN " if (site, callee) in returns else ""
            print(f"{mark}{site} -> {callee}   [{' > '.join(chain)}]")
        for callee, site in passed_back:
            print(f"BACK {callee} => {site}")
    print(f"{len(handovers)} hand-overs into {len(modules)} modules, {len(returns)} returns")
    print(
        f"{len(passed_back)} calls give back, to a caller in another module, a value holding "
        "it (a config, a record)"
    )
    writes = [k for k in handovers if k[1].startswith("utils/atomic.py")]
    print(f"of which {len(writes)} write a record holding it to disk (utils/atomic.py)")
    print("modules:", ", ".join(modules))


if __name__ == "__main__":
    main()
