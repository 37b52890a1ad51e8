"""Centered kernel alignment (CKA) between feature sets of the same samples.

Linear CKA (Kornblith et al. 2019) of features X (N x Dx) and Y (N x Dy), same samples in the
same order, with Gx = Xc Xc^T and Gy = Yc Yc^T the Gram matrices of the column-centered
features (Gx = H X X^T H):

    CKA(X, Y) = <Gx, Gy> / sqrt(<Gx, Gx> <Gy, Gy>),   <A, B> = sum_ij A_ij B_ij.

Unbiased CKA (Nguyen, Raghu and Kornblith 2021) uses Song et al.'s (2012) unbiased HSIC
estimator in place of <Gx, Gy>: with K~ = K minus its diagonal,

    HSIC_u(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).

HSIC_u does not change when features are shifted, so it may be computed from the centered
Grams: there K~1 = -d (d = diag G) and tr(K~ L~) = <Gx, Gy> - dx.dy, so every pair needs only
<Gx, Gy> and the diagonals. A layer with itself gives s / sqrt(s * s) = 1 exactly.

Many layers (CkaMatrix): each layer's N x N Gram is formed once, in float64, from column
panels of its features (never an N x D float64 copy), and kept in memory or, past half of
the budget, in a memory-mapped file; all pairwise <Gi, Gj> then come from one pass over row
blocks of every stored Gram (an L x L product per block), so no layer's features and no more
than one block of rows of each Gram are needed at once.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import BudgetError, InputError
from dnnlab.separability.inputs import as_feature_tensor, check_finite
from dnnlab.utils.chunks import chunk_rows
from dnnlab.utils.sizes import MEASURE_MEMORY, parse_size

PANEL_ELEMS = 1 << 23  # float64 elements of one column panel (64 MiB)
CKA_LEAST = 4  # the fewest samples the unbiased estimator is defined on


def centered_gram(features, dtype: torch.dtype = torch.float64, panel_elems: int = PANEL_ELEMS):
    """G = Xc Xc^T (N x N, float64) of the column-centered features, by column panels.

    Each panel of columns is centered on its own float64 means and multiplied in `dtype`;
    only the blocks on and above the diagonal are computed, then mirrored.
    """
    x = as_feature_tensor(features)
    n, d = x.shape
    g = torch.zeros((n, n), dtype=torch.float64)
    cols = chunk_rows(n, panel_elems)
    b = max(1, math.ceil(n / max(1, math.ceil(n / 1536))))  # row blocks of <= 1536
    for c0 in range(0, d, cols):
        p = x[:, c0 : c0 + cols].to(torch.float64)
        p -= p.mean(0)
        p = p.to(dtype)
        for i0 in range(0, n, b):
            for j0 in range(i0, n, b):
                g[i0 : i0 + b, j0 : j0 + b] += (p[i0 : i0 + b] @ p[j0 : j0 + b].T).double()
    for i0 in range(0, n, b):  # mirror the upper triangle: G is exactly symmetric
        blk = g[i0 : i0 + b, i0 : i0 + b]
        blk.copy_(torch.triu(blk) + torch.triu(blk, 1).T)
        for j0 in range(i0 + b, n, b):
            g[j0 : j0 + b, i0 : i0 + b] = g[i0 : i0 + b, j0 : j0 + b].T
    return g


def _hsic_terms(inner: float, di: np.ndarray, dj: np.ndarray, n: int) -> float:
    """Unbiased HSIC from <Gi, Gj> and the diagonals of the centered Grams."""
    dd = float(di @ dj)
    return (inner - dd + di.sum() * dj.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * dd) / (
        n * (n - 3)
    )


def _ratio(s: np.ndarray, i: int, j: int):
    den = s[i, i] * s[j, j]
    if not den > 0:
        return None
    return float(s[min(i, j), max(i, j)] / math.sqrt(den))


@dataclass
class CkaResult:
    layers: list[str]
    linear: list[list[float | None]]  # None: undefined (a layer constant over the samples)
    unbiased: list[list[float | None]]
    n: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def value(self, a: str, b: str, kind: str = "linear"):
        m = self.linear if kind == "linear" else self.unbiased
        return m[self.layers.index(a)][self.layers.index(b)]


# How CkaMatrix splits max_memory: the Grams kept in memory take at most 1/GRAMS_SHARE of
# it (the rest go to files), the row blocks of the final pass 1/BLOCKS_SHARE.
GRAMS_SHARE = 2
BLOCKS_SHARE = 4


class CkaMatrix:
    """Add layers one at a time (same samples, same order); `result()` gives every pair.

    max_memory (default: the measures' budget, MEASURE_MEMORY) bounds the Grams kept in
    memory (1/GRAMS_SHARE of it) and the row blocks of the final pass (1/BLOCKS_SHARE);
    Grams beyond that go to memory-mapped files in spill_dir (default: a temporary
    directory, removed by close()).
    """

    def __init__(self, max_memory=MEASURE_MEMORY, spill_dir=None, compute_dtype=torch.float64):
        self.budget = parse_size(max_memory)
        self.compute_dtype = compute_dtype
        self.names: list[str] = []
        self.grams: list = []
        self.diags: list[np.ndarray] = []
        self.ids = None
        self.n: int | None = None
        self.in_memory = 0
        self._spill_parent = spill_dir
        self._tmp: tempfile.TemporaryDirectory | None = None

    def add(self, name: str, features, ids=None) -> None:
        """Form and store layer `name`'s centered Gram; ids: the samples' ids, in order."""
        if name in self.names:
            raise InputError(f"CKA: layer {name!r} was added twice")
        x = as_feature_tensor(features)
        n = x.shape[0]
        if self.n is None:
            if n < CKA_LEAST:
                raise InputError(
                    f"CKA: layer {name!r} has N={n} samples; CKA needs N >= {CKA_LEAST}"
                )
            if n * n * 8 > self.budget // GRAMS_SHARE:
                raise BudgetError(
                    f"CKA: one {n} x {n} Gram takes {n * n * 8 / 2**30:.2f} GiB, more than "
                    f"1/{GRAMS_SHARE} of max_memory {self.budget / 2**30:.2f} GiB; raise it"
                )
            self.n = n
            self.ids = None if ids is None else np.asarray(ids)
        elif n != self.n:
            raise InputError(
                f"CKA: layer {name!r} has {n} samples but {self.names[0]!r} has {self.n}; "
                "CKA compares the same samples"
            )
        if ids is not None or self.ids is not None:
            self._check_ids(name, ids)
        check_finite(x)
        g = centered_gram(x, self.compute_dtype)
        self.diags.append(g.diagonal().numpy().copy())
        size = n * n * 8
        if self.in_memory + size <= self.budget // GRAMS_SHARE:
            self.grams.append(g)
            self.in_memory += size
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(
                    prefix="dnnlab-cka-", dir=self._spill_parent
                )
            path = Path(self._tmp.name) / f"gram{len(self.names)}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, n))
            mm[:] = g.numpy()
            mm.flush()
            self.grams.append(mm)
        self.names.append(name)

    def _check_ids(self, name: str, ids) -> None:
        if ids is None or self.ids is None:
            first = self.names[0] if self.names else name
            raise InputError(
                f"CKA: layer {name!r} {'has no' if ids is None else 'has'} sample ids but "
                f"{first!r} {'has' if ids is None else 'has none'}; give ids for every layer"
            )
        ids = np.asarray(ids)
        if ids.shape != (self.n,):
            raise InputError(f"CKA: layer {name!r}: {ids.shape} sample ids for N={self.n}")
        diff = np.flatnonzero(ids != self.ids)
        if diff.size:
            i = int(diff[0])
            raise InputError(
                f"CKA: layer {name!r}: its samples are not those of {self.names[0]!r} in the "
                f"same order ({diff.size} ids differ; first at row {i}: {ids[i]!r} vs "
                f"{self.ids[i]!r})"
            )

    def inner_products(self) -> np.ndarray:
        """S[i, j] = <Gi, Gj> for every pair, symmetric.

        Each pair is reduced the same way (a fresh elementwise product, then its sum), so
        two layers with equal Grams give exactly S[i, j] = S[i, i].
        """
        k, n = len(self.grams), self.n
        s = torch.zeros((k, k), dtype=torch.float64)
        rows = min(n, chunk_rows((k + 1) * n * 8, self.budget // BLOCKS_SHARE))
        for r0 in range(0, n, rows):
            v = [torch.as_tensor(np.asarray(g[r0 : r0 + rows])) for g in self.grams]
            for i in range(k):
                for j in range(i, k):
                    s[i, j] += torch.mul(v[i], v[j]).sum()
        return (torch.triu(s) + torch.triu(s, 1).T).numpy()

    def result(self) -> CkaResult:
        if not self.names:
            raise InputError("CKA: no layer was added")
        s = self.inner_products()
        k, n = len(self.names), self.n
        u = np.empty((k, k))
        for i in range(k):
            for j in range(i, k):
                u[i, j] = u[j, i] = _hsic_terms(s[i, j], self.diags[i], self.diags[j], n)
        lin = [[_ratio(s, i, j) for j in range(k)] for i in range(k)]
        unb = [[_ratio(u, i, j) for j in range(k)] for i in range(k)]
        notes = [
            f"layer {self.names[i]!r}: its features are constant over the samples; "
            "its CKA is undefined (null)"
            for i in range(k)
            if not s[i, i] > 0
        ]
        return CkaResult(list(self.names), lin, unb, n, notes)

    def close(self) -> None:
        self.grams.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pair(x, y, ids_x=None, ids_y=None) -> CkaResult:
    with CkaMatrix(max_memory=max(4 << 30, 4 * 8 * len(x) ** 2)) as m:
        m.add("x", x, ids_x)
        m.add("y", y, ids_y)
        res = m.result()
    if res.notes:
        raise InputError("CKA: " + "; ".join(res.notes).replace("'x'", "X").replace("'y'", "Y"))
    return res


def linear_cka(x, y, ids_x=None, ids_y=None) -> float:
    """Linear CKA of two feature sets (N, ...) of the same samples in the same order."""
    return _pair(x, y, ids_x, ids_y).linear[0][1]


def unbiased_cka(x, y, ids_x=None, ids_y=None) -> float:
    """CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021)."""
    return _pair(x, y, ids_x, ids_y).unbiased[0][1]
