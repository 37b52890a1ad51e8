"""Time and memory of the measures beyond SI, beside the SI core on the same features.

Each measurement runs in a fresh process on the same seeded features (ten Gaussian classes,
float32). Memory: the peak of the process's anonymous resident memory (RssAnon, sampled every
20 ms) above its level once the features are loaded, i.e. what the method itself allocates;
memory-mapped feature pages are file-backed and not counted there.

    python benchmarks/bench_measures.py linear          # linear vs SI core, 9,000 x 16,384

`linear` times three children on the same features: the SI core alone, `linear` fitted on its
own (fit_linear), and SI with linear (separability(x, y, "si,linear", test=...), where the
classifier takes the search's normalized copy and Gram): linear's added time is the third minus
the first. The test set (1,000 more samples of the same classes) is scored in the third. A
fourth child, "si+linear own", makes the same call with the sharing refused
(search_plan.can_share answering False, as for a FeatureFile or float64), so the classifier is
fitted on its own first: the third over the fourth is what sharing saves, in one run.
    python benchmarks/bench_measures.py wide            # linear on 9,000 x 65,536 (memmap)
    python benchmarks/bench_measures.py cka             # CKA, 17 layers of `base`, N=5,000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

N_TEST = 1000  # linear's test samples, drawn beside the N training samples

# The 17 probed layers of `base` (dnnlab.cifar.models) and their widths.
BASE_LAYERS = [
    ("conv1", 32768),
    ("elu1", 32768),
    ("conv2", 65536),
    ("elu2", 65536),
    ("maxpool1", 16384),
    ("resblock1", 16384),
    ("conv3", 32768),
    ("elu3", 32768),
    ("maxpool2", 8192),
    ("conv4", 16384),
    ("elu4", 16384),
    ("maxpool3", 4096),
    ("resblock2", 4096),
    ("avgpool", 256),
    ("flatten", 256),
    ("fc1", 256),
    ("fc2", 10),
]


def make_data(n: int, d: int, seed: int, out=None):
    """Ten Gaussian classes whose means differ a little; float32, written in row chunks."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, d, generator=g) * 0.15
    x = torch.empty(n, d) if out is None else torch.from_numpy(out)
    for s in range(0, n, 512):
        x[s : s + 512] = torch.randn(min(512, n - s), d, generator=g) + means[y[s : s + 512]]
    return x, y


class AnonPeak:
    """Peak RssAnon of this process, sampled in a thread."""

    def __init__(self):
        self.peak = self.now()
        self.run = True
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    @staticmethod
    def now() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def loop(self):
        while self.run:
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def stop(self) -> int:
        self.run = False
        self.t.join()
        return max(self.peak, self.now())


def child(which: str, args) -> dict:
    torch.set_float32_matmul_precision("highest")
    out: dict = {}
    if which in ("si", "linear", "si+linear", "si+linear-own"):
        x, y = make_data(args.n + N_TEST, args.d, args.seed)
        xt, yt = x[args.n :].clone(), y[args.n :].clone()
        x, y = x[: args.n].clone(), y[: args.n].clone()
    elif which == "wide":
        x = np.load(args.file, mmap_mode="r")
        y = torch.from_numpy(np.load(args.file + ".y.npy"))
    base = AnonPeak.now()
    mon = AnonPeak()
    t = time.perf_counter()
    if which == "si":
        from dnnlab.separability import separability

        out["values"] = separability(x, y, "si", max_memory=args.max_memory).values
    elif which in ("si+linear", "si+linear-own"):  # separability(x, y, "si,linear", test=...)
        from dnnlab.separability import measures, separability

        if which == "si+linear-own":  # the sharing refused: the classifier fitted on its own
            measures.can_share = lambda *_: False

        r = separability(x, y, "si,linear", test=(xt, yt), max_memory=args.max_memory)
        p = r.linear_classifier
        out["values"] = r.values
        out["notes"] = [n for n in r.notes if n.startswith("linear")]
        out["notes"].append(f"fit stages (s) { {k: round(v, 2) for k, v in p.timings.items()} }")
    elif which in ("linear", "wide"):
        from dnnlab.separability.linear import fit_linear

        p = fit_linear(x, y, max_memory=args.max_memory)
        out["values"] = {"train_accuracy": p.train_accuracy}
        out.update(
            form=p.form,
            refine_steps=p.refine_steps,
            fallback=p.fallback,
            stages={k: round(v, 2) for k, v in p.timings.items()},
        )
    else:  # cka: one layer's features at a time, as the probe gives them
        from dnnlab.separability.cka import CkaMatrix

        gen_s = 0.0
        with CkaMatrix(max_memory=args.max_memory, spill_dir=args.spill) as m:
            for i, (name, d) in enumerate(BASE_LAYERS):
                t0 = time.perf_counter()
                f, _ = make_data(args.n, d, args.seed + i)
                gen_s += time.perf_counter() - t0
                m.add(name, f)
                del f
            res = m.result()
        out["values"] = {"cka(conv1,elu1)": res.linear[0][1], "self": res.linear[5][5]}
        out["generate_seconds"] = gen_s
    out["seconds"] = time.perf_counter() - t - out.get("generate_seconds", 0.0)
    out["peak_added"] = mon.stop() - base
    return out


def spawn(which: str, args, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        args.what,
        "--child",
        which,
        "--n",
        str(args.n),
        "--d",
        str(args.d),
        "--seed",
        str(args.seed),
        "--max-memory",
        args.max_memory,
    ]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def _describe(r: dict, name: str) -> str:
    if "error" in r:
        return r["error"]
    text = f"{r['seconds']:8.2f} s  +{gib(r['peak_added'])}  {r['values']}"
    if name == "linear":
        text += (
            f" {r['form']} form, {r['refine_steps']} refinement steps, fallback="
            f"{r['fallback']}, stages (s) {r['stages']}"
        )
    return text + "".join(f"\n{'':12}{n}" for n in r.get("notes", []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["linear", "wide", "cka"])
    ap.add_argument(
        "--child", choices=["si", "linear", "si+linear", "si+linear-own", "wide", "cka"]
    )
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--spill", default=None, help="directory for CKA's spilled Grams")
    ap.add_argument("--repeat", type=int, default=1, help="linear: rounds of SI, linear")
    args = ap.parse_args()
    defaults = {
        "linear": (9000, 16384, "2GB"),
        "wide": (9000, 65536, "2GB"),
        "cka": (5000, 0, "4GB"),
    }
    n, d, mem = defaults[args.what]
    args.n, args.d = args.n or n, args.d or d
    args.max_memory = args.max_memory or mem
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    print(
        f"# threads={torch.get_num_threads()} cpus={os.cpu_count()} torch={torch.__version__}"
        f" max_memory={args.max_memory}"
    )
    if args.what == "linear":
        print(f"N={args.n} D={args.d}")
        for rep in range(args.repeat):  # alternate, so all see the same contention
            si = spawn("si", args)
            lin = spawn("linear", args)
            both = spawn("si+linear", args)
            own = spawn("si+linear-own", args)
            runs = (("SI core", si), ("linear", lin), ("SI+linear", both), ("SI+lin own", own))
            for name, r in runs:
                print(f"  {name:<10}" + _describe(r, name))
            if not any("error" in r for _, r in runs):
                added = both["seconds"] - si["seconds"]
                print(
                    f"  round {rep + 1}: linear on its own / SI core: time "
                    f"x{lin['seconds'] / si['seconds']:.2f}, memory "
                    f"x{lin['peak_added'] / si['peak_added']:.2f}; linear beside the SI core "
                    f"(SI+linear - SI = {added:.2f} s) / SI core: time "
                    f"x{added / si['seconds']:.2f}; SI+linear memory +{gib(both['peak_added'])}; "
                    f"shared / not shared (SI+linear / SI+lin own): time "
                    f"x{both['seconds'] / own['seconds']:.2f}",
                    flush=True,
                )
    elif args.what == "wide":
        with tempfile.TemporaryDirectory(dir=args.spill) as tmp:
            path = str(Path(tmp) / "wide.npy")
            mm = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(args.n, args.d)
            )
            _, y = make_data(args.n, args.d, args.seed, out=mm)
            mm.flush()
            del mm
            np.save(path + ".y.npy", y.numpy())
            r = spawn("wide", args, file=path)
        print(f"N={args.n} D={args.d} (features memory-mapped, {gib(args.n * args.d * 4)})")
        print(
            "  linear   "
            + (
                r["error"]
                if "error" in r
                else f"{r['seconds']:8.2f} s  +{gib(r['peak_added'])}  {r['values']} "
                f"{r['form']} form"
                f", {r['refine_steps']} refinement steps, stages (s) {r['stages']}"
            )
        )
    else:
        r = spawn("cka", args, **({"spill": args.spill} if args.spill else {}))
        dims = sum(d for _, d in BASE_LAYERS)
        print(f"CKA: {len(BASE_LAYERS)} layers of base (sum D = {dims}), N={args.n}")
        print(
            "  "
            + (
                r["error"]
                if "error" in r
                else f"{r['seconds']:8.2f} s (+{r['generate_seconds']:.1f} s generating features)  "
                f"+{gib(r['peak_added'])}  {r['values']}"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
