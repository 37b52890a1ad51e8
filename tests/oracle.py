"""Independent float64 brute force for the separability measures: plain numpy, obvious code."""

import numpy as np


def normalize(x, method):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if method == "zscore":
        return (x - x.mean(0)) / (x.std(0, ddof=1) + 1e-10)
    if method == "minmax":
        span = x.max(0) - x.min(0)
        return np.where(span > 0, (x - x.min(0)) / np.where(span > 0, span, 1), 0.0)
    return x


def neighbours(a):
    """Every row's other rows, ordered by (exact distance, index)."""
    n = len(a)
    out = []
    for i in range(n):
        d = ((a - a[i]) ** 2).sum(1)
        order = sorted((d[j], j) for j in range(n) if j != i)
        out.append([j for _, j in order])
    return out


def measures(x, y, orders=(1, 2, 3), method="zscore"):
    a = normalize(x, method)
    y = np.asarray(y)
    n = len(a)
    nb = neighbours(a)
    res = {}
    for r in orders:
        same = [sum(y[j] == y[i] for j in nb[i][:r]) for i in range(n)]
        res[f"hsi:{r}"] = sum(s == r for s in same) / n
        res[f"soft:{r}"] = sum(same) / (n * r)
        res[f"anti:{r}"] = sum(s == 0 for s in same) / n
    res["si"] = res["hsi:1"] if 1 in orders else None
    classes = sorted(set(y.tolist()))
    centers = np.array([a[y == c].mean(0) for c in classes])
    hits = 0
    for i in range(n):
        d = ((centers - a[i]) ** 2).sum(1)
        best = min(range(len(classes)), key=lambda c: (d[c], c))
        hits += classes[best] == y[i]
    res["csi"] = hits / n
    return res
