"""The linear classifier's ridge system (separability.linear): the row blocks of the normalized,
centered features Zc, its Gram matrix in either form, and the exact float64 system
(G + alpha I) S = R applied by streaming the rows."""

from __future__ import annotations

import torch

from dnnlab.separability.normalize import normalize_rows
from dnnlab.utils.chunks import chunk_rows


def normalized_block(x, r0, r1, mean, scale, dtype, dev) -> torch.Tensor:
    """Rows r0:r1 of x, centered on the training mean and scaled, in dtype on dev (the
    separability core's formula: bit-identical to its normalized copy under zscore)."""
    return normalize_rows(x[r0:r1].to(dev, non_blocking=True), mean, scale, dtype)


class Rows:
    """Row blocks of the normalized, centered features Zc in the compute dtype: the values
    that define the system (computed once into `cache` when it fits, else on the fly)."""

    def __init__(self, x, mean, scale, dtype, dev, cache_ok: bool, cache=None):
        self.x, self.mean, self.scale, self.dtype, self.dev = x, mean, scale, dtype, dev
        n = x.shape[0]
        if cache is None and cache_ok:
            cache = normalized_block(x, 0, n, mean, scale, dtype, dev)
        self.cache = cache

    def block(self, r0: int, r1: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[r0:r1]
        return normalized_block(self.x, r0, r1, self.mean, self.scale, self.dtype, self.dev)


class RidgeSystem:
    """The exact float64 system (G + alpha I) S = R of either form, applied by streaming.

    Zc is the normalized rows minus their float64 column mean m: the rows are centered on a
    float32-rounded shift and rounded themselves, so they are a little off centre (a feature
    with a large offset, by some hundredths of its spread), and the intercept needs them
    exactly centered. m enters as a rank-one correction everywhere; rows are never copied."""

    def __init__(self, rows: Rows, alpha, dual, chunk_elems):
        self.src, self.alpha, self.dual, self.dev = rows, alpha, dual, rows.dev
        self.x = rows.x
        n, d = self.x.shape
        self.step = chunk_rows(d, chunk_elems)
        # One float64 chunk reused by every pass: a fresh 32 MiB buffer per chunk costs a page
        # fault per 4 KiB each time.
        self.buf = torch.empty((min(n, self.step), d), dtype=torch.float64, device=self.dev)
        total = torch.zeros(d, dtype=torch.float64, device=self.dev)
        for s in range(0, n, self.step):  # summed in float64 straight from the rows
            total += self.src.block(s, min(n, s + self.step)).sum(0, dtype=torch.float64)
        self.m = total / n  # (D,) float64

    def rows(self):
        """(start, end, normalized rows in float64), uncentered (the methods correct for m);
        the rows are valid until the next one is drawn."""
        n = self.x.shape[0]
        for s in range(0, n, self.step):
            e = min(n, s + self.step)
            z = self.buf[: e - s]
            z.copy_(self.src.block(s, e))
            yield s, e, z

    def zt(self, p: torch.Tensor) -> torch.Tensor:
        """Zc^T p for p (N, C), accumulated as (p^T Z) (C x D) less (1^T p) m^T."""
        out = torch.zeros((p.shape[1], self.x.shape[1]), dtype=torch.float64, device=self.dev)
        for s, e, z in self.rows():
            out.addmm_(p[s:e].T, z)
        out -= p.sum(0)[:, None] * self.m[None, :]
        return out.T.contiguous()

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """(G + alpha I) p, G = Zc Zc^T (dual) or Zc^T Zc (primal), in float64."""
        if self.dual:
            t = self.zt(p)  # Zc^T p (D, C)
            out = torch.empty_like(p)
            for s, e, z in self.rows():
                out[s:e] = z @ t
            out -= (self.m @ t)[None, :]  # Zc t = Z t - 1 (m^T t)
        else:  # Zc^T Zc = Z^T Z - N m m^T
            out = torch.zeros((p.shape[1], p.shape[0]), dtype=torch.float64, device=self.dev)
            for _, _, z in self.rows():
                out.addmm_((z @ p).T, z)
            out = out.T.contiguous()
            out -= self.x.shape[0] * self.m[:, None] * (self.m @ p)[None, :]
        return out.add_(p, alpha=self.alpha)

    def center_gram(self, g: torch.Tensor) -> None:
        """Turn the rows' Gram (Z Z^T or Z^T Z, any dtype) into Zc's, in place."""
        m = self.m
        if self.dual:  # Zc Zc^T = Z Z^T - u 1^T - 1 u^T + (m.m) 1 1^T, u = Z m
            # In g's dtype: the refinement makes up for the Gram's rounding either way.
            n = self.x.shape[0]
            u = torch.empty(n, dtype=g.dtype, device=self.dev)
            for s in range(0, n, self.step):
                e = min(n, s + self.step)
                u[s:e] = self.src.block(s, e).to(g.dtype) @ m.to(g.dtype)
            g.sub_(u[:, None]).sub_(u[None, :]).add_(float(m @ m))
        else:
            g.sub_((self.x.shape[0] * torch.outer(m, m)).to(g.dtype))


def form_gram(rows: Rows, dual: bool, dtype, workspace: int, chunk_elems: int):
    """G = Zc Zc^T (N x N, dual) or Zc^T Zc (D x D, primal) in `dtype`.

    Dual: row blocks, each pair (I, J >= I) once. Primal: row chunks, G += Z_c^T Z_c.
    """
    n, d = rows.x.shape
    item = torch.finfo(dtype).bits // 8
    size = n if dual else d
    g = torch.zeros((size, size), dtype=dtype, device=rows.dev)

    def block(r0, r1):
        return rows.block(r0, r1).to(dtype)

    if not dual:
        step = min(n, chunk_rows(d, chunk_elems))
        for s in range(0, n, step):
            z = block(s, s + step)
            g.addmm_(z.T, z)
        return g
    # As the SI core (knn.choose_block): on a CPU, 768-row blocks run at full GEMM rate when D
    # is large and waste less on the diagonal pairs.
    cap = 768 if rows.dev.type == "cpu" and d >= 2048 else 2048
    b = int(max(64, min(n, cap, workspace // max(3 * d * item, 1))))
    for i0 in range(0, n, b):
        zi = block(i0, i0 + b)
        for j0 in range(i0, n, b):
            zj = zi if j0 == i0 else block(j0, j0 + b)
            prod = zi @ zj.T
            g[i0 : i0 + b, j0 : j0 + b] = prod
            if j0 != i0:
                g[j0 : j0 + b, i0 : i0 + b] = prod.T
    return g
