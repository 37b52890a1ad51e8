"""Per-feature normalization applied before distances are measured.

One pass over row chunks gathers min, max, mean and the sum of squared deviations (each
chunk's own in the working precision, combined across chunks in float64 with Chan's
formula), a second pass writes the normalized copy. A constant feature (max == min) gets
scale 0, so it normalizes to exactly 0: no NaN, and no rounding noise divided by 1e-10.
"""

from __future__ import annotations

import torch

from dnnlab.utils.chunks import chunk_rows

NORMALIZATIONS = ("zscore", "minmax", "none")
# The reference implementation divides by (unbiased std + 1e-10); we keep that constant so
# values are comparable with it.
STD_EPS = 1e-10


def _row_chunks(n: int, d: int, budget_elems: int = 1 << 23):
    step = chunk_rows(d, budget_elems)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _work_dtype(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The precision normalization is computed in: float64 when the input or the output is
    float64, else float32."""
    return torch.float64 if torch.float64 in (x.dtype, dtype) else torch.float32


def normalize_rows(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype, out=None
) -> torch.Tensor:
    """(x - shift) * scale for a row chunk x (rows, D), in `dtype`.

    shift and scale are float64 (D,) from feature_stats. Computed in the working precision
    (_work_dtype) and rounded once to dtype when that is narrower; subtracting first needs no
    fused multiply-add to avoid cancelling when a feature's mean is large against its spread.
    The one formula for every normalization and every caller (the separability core, the
    linear probe), so the same features give bit-identical normalized values.
    `out` may be x itself (x's contents are then lost).
    """
    work = _work_dtype(x, dtype)
    c = x.to(work)
    sh, sc = shift.to(device=x.device, dtype=work), scale.to(device=x.device, dtype=work)
    if out is not None and out.dtype == work:
        return torch.sub(c, sh, out=out).mul_(sc)
    z = torch.sub(c, sh).mul_(sc).to(dtype)
    return z if out is None else out.copy_(z)


def feature_stats(x: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float64 (shift, scale) so that normalized = (x - shift) * scale."""
    n, d = x.shape
    f64 = dict(dtype=torch.float64, device=x.device)
    if method == "none":
        return torch.zeros(d, **f64), torch.ones(d, **f64)
    if method not in ("zscore", "minmax"):
        raise ValueError(f"unknown normalization {method!r}; choose one of {NORMALIZATIONS}")
    work = _work_dtype(x)
    lo = torch.full((d,), float("inf"), **f64)
    hi = torch.full((d,), float("-inf"), **f64)
    mean = torch.zeros(d, **f64)
    m2 = torch.zeros(d, **f64)
    count = 0
    for a, b in _row_chunks(n, d):
        c = x[a:b].to(work)
        lo = torch.minimum(lo, c.amin(0).double())
        hi = torch.maximum(hi, c.amax(0).double())
        if method == "zscore":
            # Corrected two-pass (Chan, Golub and LeVeque): the deviations from the chunk's
            # rounded mean carry its error, which their own mean then removes, so a feature
            # whose mean is large against its spread keeps its precision.
            cm = c.mean(0)
            dev = c - cm
            corr = dev.mean(0)
            nb = b - a
            ss = dev.square_().sum(0)
            if not bool(torch.isfinite(ss).all()):  # squares beyond float32 (spread ~1e19)
                ss = (c.double() - cm.double()).square_().sum(0)
            cm2 = (ss.double() - nb * corr.double().square()).clamp_(min=0)
            cm = cm.double() + corr.double()
            delta = cm - mean
            tot = count + nb
            mean += delta * (nb / tot)
            m2 += cm2 + delta.square() * (count * nb / tot)
            count = tot
    constant = hi == lo
    if method == "minmax":
        span = torch.where(constant, 1.0, hi - lo)
        return lo, torch.where(constant, 0.0, 1.0 / span)
    std = (m2 / max(n - 1, 1)).sqrt() + STD_EPS
    # A constant feature's shift is its value, so x - shift is exactly 0 in any precision.
    return torch.where(constant, lo, mean), torch.where(constant, 0.0, 1.0 / std)


def normalize_with_norms(
    x: torch.Tensor, method: str = "zscore", dtype=torch.float32, inplace: bool = False, stats=None
):
    """Return (normalized x in `dtype`, its squared row norms).

    stats: feature_stats(x, method) when the caller has them already.
    x is left untouched unless inplace=True, which reuses x's memory when it already has the
    right dtype and layout (the caller gives up its contents; saves one N x D copy).
    Identical input rows give bit-identical output rows, which exact-duplicate handling needs.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {NORMALIZATIONS}")
    shift, scale = feature_stats(x, method) if stats is None else stats
    n, d = x.shape
    reuse = inplace and x.dtype == dtype and x.is_contiguous()
    out = x if reuse else torch.empty((n, d), dtype=dtype, device=x.device)
    sq = torch.empty(n, dtype=dtype, device=x.device)
    for a, b in _row_chunks(n, d):
        o = out[a:b]
        if method == "none":
            o.copy_(x[a:b])
        else:
            normalize_rows(x[a:b], shift, scale, dtype, out=o)
        sq[a:b] = torch.linalg.vector_norm(o, dim=1).square_()
    return out, sq


def normalize(x: torch.Tensor, method: str = "zscore", dtype=torch.float32) -> torch.Tensor:
    """A normalized copy of the (N, D) tensor x in `dtype`."""
    return normalize_with_norms(x, method, dtype)[0]


class NormalizedRows:
    """The normalized features of a row source (a FeatureFile) without an N x D copy: rows
    are read and normalized (normalize_rows, so bit-identical to normalize_with_norms's copy)
    when asked for, `a[i0:i1]` or `a.index_select(0, rows)`, in `dtype` on `device`.

    The last `keep` distinct row ranges are kept: the neighbour search asks for block I
    against each block J >= I in turn, so I is read once per row of blocks.
    """

    def __init__(self, x, shift, scale, dtype, device, keep: int = 2):
        self.x, self.shift, self.scale = x, shift, scale
        self.dtype, self.device = dtype, torch.device(device)
        self.shape = x.shape
        self.ndim = 2
        self.keep = keep
        self._kept: dict[tuple[int, int], torch.Tensor] = {}

    def _normalized(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (fresh from the file, so ours to overwrite) normalized, in place when their
        dtype is the working one."""
        rows = rows.to(self.device)
        same = rows.dtype == self.dtype == _work_dtype(rows, self.dtype) and rows.is_contiguous()
        return normalize_rows(rows, self.shift, self.scale, self.dtype, out=rows if same else None)

    def __getitem__(self, key) -> torch.Tensor:
        if not isinstance(key, slice):
            return self.index_select(0, torch.as_tensor(key))
        i0, i1, step = key.indices(self.shape[0])
        if step != 1:
            return self.index_select(0, torch.arange(i0, i1, step))
        got = self._kept.pop((i0, i1), None)
        if got is None:
            got = self._normalized(self.x[i0:i1])
        self._kept[(i0, i1)] = got  # most recent last
        while len(self._kept) > self.keep:
            self._kept.pop(next(iter(self._kept)))
        return got

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        return self._normalized(self.x.index_select(dim, index.cpu()))

    def forget(self) -> None:
        """Drop the kept blocks (their memory goes back)."""
        self._kept.clear()
