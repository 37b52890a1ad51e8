"""Time and peak memory of dnnlab's SI + CSI against a reference written like the public one.

The reference (ARH/Kalhor SeparationIndex style): normalize, build the full N x N distance
matrix with torch.cdist, fill its diagonal with a big number, argmin in row batches; CSI from
class means, cdist to them, argmin. Each measurement runs in a fresh process so that its peak
resident memory (ru_maxrss) is its own; both run in the same invocation, on the same data.

    python benchmarks/bench_separability.py                 # the issue's N x D grid
    python benchmarks/bench_separability.py --large         # N=50,000, D=4096, dnnlab only
    python benchmarks/bench_separability.py --device cuda --n 50000 --d 16384 --only dnnlab
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def make_data(n: int, d: int, seed: int, device: str):
    """Ten Gaussian classes whose means differ a little, float32, on the given device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, d, generator=g) * 0.15
    x = torch.empty(n, d)
    for s in range(0, n, 1024):  # in chunks: no N x D temporary inflates the peak memory
        x[s : s + 1024] = torch.randn(min(1024, n - s), d, generator=g) + means[y[s : s + 1024]]
    return x.to(device), y.to(device)


def reference(x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> dict:
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True) + 1e-10
    data = (x - mean) / std
    dis = torch.cdist(data, data, p=2).fill_diagonal_(1e10)
    hits = 0
    for s in range(0, len(data), batch):
        nn = dis[s : s + batch].argmin(1)
        hits += int((y[nn] == y[s : s + batch]).sum())
    si = hits / len(data)
    classes = torch.unique(y)
    centers = torch.stack([data[y == c].mean(0) for c in classes])
    near = torch.cdist(data, centers).argmin(1)
    csi = int((classes[near] == y).sum()) / len(data)
    return {"si": si, "csi": csi}


def gemm_rate(d: int, device: str, m: int = 2048) -> float:
    """The machine's float32 GEMM rate: GFLOP/s of one large torch.mm, (m x d) @ (d x m)."""
    a = torch.randn(m, d, device=device)
    b = torch.randn(m, d, device=device)
    torch.mm(a, b.T)
    reps = 3
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b.T)
    sync()
    return 2 * m * m * d * reps / (time.perf_counter() - t) / 1e9


def child(which: str, n: int, d: int, seed: int, device: str, max_memory: str) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    x, y = make_data(n, d, seed, device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    t = time.perf_counter()
    out: dict = {}
    st = None
    if which == "ref":
        out["values"] = reference(x, y)
    else:
        from dnnlab.separability import separability
        from dnnlab.separability.knn import SearchStats

        st = SearchStats()
        res = separability(x, y, ("si", "csi"), max_memory=max_memory, stats=st)
        out["values"] = res.values
        out.update(block=st.block, refined=st.refined_rows, fallback=st.fallback_rows)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["gpu_peak"] = torch.cuda.max_memory_allocated() - base_gpu
    out["seconds"] = time.perf_counter() - t
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if st is not None and st.gemm_seconds:  # measured after the clock stopped
        out["mm_gflops"] = st.gemm_flops / st.gemm_seconds / 1e9
        out["gemm_ref_gflops"] = gemm_rate(d, device)
    out["data_rss"] = base_rss
    return out


def spawn(which, n, d, seed, device, max_memory, timeout) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--n",
        str(n),
        "--d",
        str(d),
        "--seed",
        str(seed),
        "--device",
        device,
        "--max-memory",
        max_memory,
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {p.returncode}: {tail[0][:120]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def gb(b):
    return f"{b / 2**30:6.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", choices=["ref", "dnnlab"])
    ap.add_argument("--n", type=int, nargs="*", default=[2000, 9000, 20000])
    ap.add_argument("--d", type=int, nargs="*", default=[256, 4096, 16384])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-memory", default="2GB")
    ap.add_argument("--only", choices=["ref", "dnnlab"])
    ap.add_argument("--large", action="store_true", help="N=50,000, D=4096, dnnlab only")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.child, args.n[0], args.d[0], args.seed, args.device, args.max_memory)
            )
        )
        return 0
    if args.large:
        args.n, args.d, args.only = [50000], [4096], "dnnlab"
    print(
        f"# device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
        f" cpus={os.cpu_count()} max_memory={args.max_memory}"
    )
    print(
        "# GB = peak memory of the process (CPU: ru_maxrss, including the interpreter and the"
        " input data; CUDA: peak allocated)\n# +GB = peak above the process with its data"
        " loaded, i.e. what the method itself needs"
    )
    print(
        "     N      D | ref s  ref GB ref +GB | dnn s  dnn GB dnn +GB | time x  mem x +mem x"
        " | block refined | mm GF/s gemm GF/s ratio | SI     CSI    agree"
    )
    rows = []
    for n in args.n:
        for d in args.d:
            ref = (
                {}
                if args.only == "dnnlab"
                else spawn("ref", n, d, args.seed, args.device, args.max_memory, args.timeout)
            )
            ours = (
                {}
                if args.only == "ref"
                else spawn("dnnlab", n, d, args.seed, args.device, args.max_memory, args.timeout)
            )
            rows.append({"n": n, "d": d, "ref": ref, "dnnlab": ours})
            print(fmt_row(n, d, ref, ours), flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as fh:
            json.dump(rows, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


def fmt_row(n, d, ref, ours) -> str:
    def added(r):
        return r["gpu_peak"] if "gpu_peak" in r else r["peak_rss"] - r["data_rss"]

    def part(r):
        if not r:
            return "     -      -       -"
        if "error" in r:
            return f"{r['error'][:21]:>21}"
        mem = r.get("gpu_peak", r["peak_rss"])
        return f"{r['seconds']:6.2f} {gb(mem)} {gb(added(r))}"

    s = f"{n:>6} {d:>6} | {part(ref)} | {part(ours)} |"
    if ref and ours and "error" not in ref and "error" not in ours:
        key = "gpu_peak" if "gpu_peak" in ref else "peak_rss"
        s += (
            f" {ours['seconds'] / ref['seconds']:5.2f}  {ours[key] / ref[key]:5.2f}"
            f" {added(ours) / added(ref):5.2f} |"
        )
    else:
        s += "     -      -     - |"
    if ours and "error" not in ours:
        s += f" {ours['block']:>5} {ours['refined']:>7} |"
        if "mm_gflops" in ours:
            r = ours["mm_gflops"] / ours["gemm_ref_gflops"]
            s += f" {ours['mm_gflops']:7.1f} {ours['gemm_ref_gflops']:9.1f} {r:5.2f} |"
        else:
            s += "       -         -     - |"
        v = ours["values"]
        s += f" {v['si']:.4f} {v['csi']:.4f}"
        if ref and "error" not in ref:
            s += f" {'yes' if ref['values'] == v else 'NO ' + str(ref['values'])}"
    return s


if __name__ == "__main__":
    sys.exit(main())
