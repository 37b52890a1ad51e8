"""Per-feature normalization applied before distances are measured.

One pass over row chunks gathers min, max, mean and the sum of squared deviations (each
chunk's own in the working precision, combined across chunks in float64 with Chan's
formula), a second pass writes the normalized copy. A constant feature (max == min) gets
scale 0, so it normalizes to exactly 0: no NaN, and no rounding noise divided by 1e-10.
"""

from __future__ import annotations

import torch

from dnnlab.errors import InputError
from dnnlab.utils.chunks import chunk_rows, row_chunks

NORMALIZATIONS = ("zscore", "minmax", "none")
# The reference implementation divides by (unbiased std + 1e-10); we keep that constant so
# values are comparable with it.
STD_EPS = 1e-10


# Elements per row chunk of the streamed passes (32 MiB of float32).
CHUNK_ELEMS = 1 << 23


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
    linear classifier), so the same features give bit-identical normalized values.
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
    """Return float64 (shift, scale) so that normalized = (x - shift) * scale.

    Scale-invariant: features multiplied by any c > 0 (that stays finite) give the same
    normalized values up to rounding. zscore divides by (std + eps) with the reference's
    eps = 1e-10, made relative when every spread is below 1: eps = 1e-10 * min(1, the
    largest std), so tiny features are not flattened by the constant (for spreads of 1e-2
    and more the two differ by less than float32's rounding). When a spread's squares
    underflow or overflow float64 (values beyond about 1e+-150), the moments are taken again
    on the features scaled by a power of two per feature (exact). A spread too small or too
    large to invert in float64 is refused with that reason.
    """
    n, d = x.shape
    f64 = dict(dtype=torch.float64, device=x.device)
    if method == "none":
        return torch.zeros(d, **f64), torch.ones(d, **f64)
    if method not in ("zscore", "minmax"):
        raise ValueError(f"unknown normalization {method!r}; choose one of {NORMALIZATIONS}")
    lo, hi, mean, std = _moments(x, method == "zscore", None)
    constant = hi == lo
    finite = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
    if not finite:  # NaN or Inf in x: the callers name the rows (inputs.check_finite)
        return (lo if method == "minmax" else mean), torch.full_like(lo, float("nan"))
    if method == "minmax":
        span = torch.where(constant, 1.0, hi - lo)
        return lo, _checked_scale(torch.where(constant, 0.0, 1.0 / span), "span (max - min)")
    if bool((~torch.isfinite(std) | ((std == 0) & ~constant)).any()):
        lo, hi, mean, std = _moments(x, True, _power_of_two_scale(x))
    eps = STD_EPS * min(1.0, float(std.max()))
    scale = torch.where(constant, 0.0, 1.0 / (std + eps))
    # A constant feature's shift is its value, so x - shift is exactly 0 in any precision.
    return torch.where(constant, lo, mean), _checked_scale(scale, "standard deviation")


def _moments(x: torch.Tensor, zscore: bool, mult: torch.Tensor | None):
    """float64 per-feature (min, max, mean, unbiased std) of x (N, D), streamed by chunks.

    mult: (D,) powers of two to multiply the rows by before the mean and spread are taken
    (then divided out again), for features whose squares leave float64's range.
    Corrected two-pass per chunk (Chan, Golub and LeVeque): the deviations from the chunk's
    rounded mean carry its error, which their own mean then removes, so a feature whose mean
    is large against its spread keeps its precision. Chunks combine with Chan's formula.
    """
    n, d = x.shape
    f64 = dict(dtype=torch.float64, device=x.device)
    work = torch.float64 if mult is not None else _work_dtype(x)
    lo = torch.full((d,), float("inf"), **f64)
    hi = torch.full((d,), float("-inf"), **f64)
    mean = torch.zeros(d, **f64)
    m2 = torch.zeros(d, **f64)
    count = 0
    for a, b in row_chunks(n, chunk_rows(d, CHUNK_ELEMS)):
        c = x[a:b].to(work)
        c_lo, c_hi = c.amin(0).double(), c.amax(0).double()
        lo, hi = torch.minimum(lo, c_lo), torch.maximum(hi, c_hi)
        if not zscore:
            continue
        if mult is not None:
            c = c * mult
        cm = c.mean(0)
        dev = c - cm
        corr = dev.mean(0)
        nb = b - a
        ss = dev.square_().sum(0)
        # Squares beyond float32's range (spread ~1e19) or below it (~1e-19): in float64.
        if not bool(torch.isfinite(ss).all()) or bool(((ss == 0) & (c_hi != c_lo)).any()):
            ss = (c.double() - cm.double()).square_().sum(0)
        cm2 = (ss.double() - nb * corr.double().square()).clamp_(min=0)
        cm = cm.double() + corr.double()
        delta = cm - mean
        tot = count + nb
        mean += delta * (nb / tot)
        m2 += cm2 + delta.square() * (count * nb / tot)
        count = tot
    std = (m2 / max(n - 1, 1)).sqrt()
    if mult is not None:
        mean, std = mean / mult, std / mult
    return lo, hi, mean, std


def _power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """(D,) float64 2^-e with 2^e near each feature's largest |value| (1 for a zero
    feature): multiplying by it is exact and brings every feature near 1."""
    n, d = x.shape
    top = torch.zeros(d, dtype=torch.float64, device=x.device)
    for a, b in row_chunks(n, chunk_rows(d, CHUNK_ELEMS)):
        top = torch.maximum(top, x[a:b].abs().amax(0).double())
    _, e = torch.frexp(top)
    return torch.where(top > 0, torch.ldexp(torch.ones_like(top), -e), 1.0)


def _checked_scale(scale: torch.Tensor, what: str) -> torch.Tensor:
    """scale, unless some feature's is not finite: its spread cannot be inverted in
    float64 (below about 1e-308, or beyond about 1e308): refused with that reason."""
    bad = ~torch.isfinite(scale)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise InputError(
            f"feature {j} (and {int(bad.sum()) - 1} more) has a {what} too small or too large "
            "for float64 to invert (beyond about 1e-308 or 1e308); rescale the features"
        )
    return scale


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
    for a, b in row_chunks(n, chunk_rows(d, CHUNK_ELEMS)):
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
