"""Resuming a probe: what each row is computed from (its provenance), and which rows of an
earlier probe.json still hold for this probe (their fingerprints match)."""

from __future__ import annotations

from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.probe.config import ProbeConfig
from dnnlab.probe.layers import LayerInfo
from dnnlab.probe.provenance import row_fingerprint, split_identity, stale_reason
from dnnlab.separability import parse_measures
from dnnlab.utils.records import RecordError, read_json


def expected_provenance(
    splits: dict, infos: list[LayerInfo], cfg: ProbeConfig, weights: str, source: dict | None
) -> dict[tuple[str, str], dict]:
    """{(split, layer): provenance}: what each row of this probe is computed from."""
    measures = ",".join(m.name for m in parse_measures(cfg.measures))
    expected = {}
    for split, (x, y) in splits.items():
        data = split_identity(x, y)
        for info in infos:
            expected[(split, info.name)] = {
                "weights": weights,
                "data": data,
                "split": split,
                "n": len(x),
                "layer": info.name,
                "measures": measures,
                "normalize": cfg.normalize,
                "output_key": cfg.output_key,
                "per_class": cfg.per_class,
                "features": "float16" if cfg.memmap == "float16" else "float32",
                **(source or {}),
            }
    return expected


def load_existing(
    out: Path | None,
    cfg: ProbeConfig,
    overwrite: bool,
    expected: dict,
    weights: str,
    notes: list[str],
) -> list[dict]:
    """Earlier rows whose fingerprint matches what this probe would compute; the others are
    dropped (recomputed) with a note saying which input changed."""
    if out is None or not (out / "probe.json").exists():
        return []
    path = out / "probe.json"
    try:
        prev = read_json(path, ("config", "rows"))
        old_cfg, old_rows = prev["config"], list(prev["rows"])
    except (RecordError, TypeError) as e:
        if not overwrite:
            raise InputError(
                f"{path}: not a probe.json dnnlab can read ({e}); pass --overwrite to replace it"
            ) from None
        return []
    same = all(
        old_cfg.get(k) == v for k, v in (("measures", cfg.measures), ("normalize", cfg.normalize))
    )
    if not same and not overwrite:
        raise InputError(
            f"{path} holds results for measures={old_cfg.get('measures')}"
            f", normalize={old_cfg.get('normalize')}; pass --overwrite to replace them"
        )
    if not same:
        return []
    keep, stale = [], 0
    for r in old_rows:
        key = (r.get("split"), r.get("layer"))
        if key in expected:
            if r.get("fingerprint") == row_fingerprint(expected[key]):
                keep.append(r)
                continue
            stale += 1
            if stale <= 3:
                notes.append(
                    f"recomputing {key[0]}/{key[1]}: the stored row was made from "
                    f"{stale_reason(r.get('provenance') or {}, expected[key])}"
                )
        elif (r.get("provenance") or {}).get("weights") == weights:
            keep.append(r)  # another split or layer of these same weights: still valid
        else:
            stale += 1
            notes.append(
                f"dropped {key[0]}/{key[1]}: made from other weights or by an older "
                "dnnlab, and not recomputed in this probe"
            )
    if stale > 3:
        notes.append(f"... {stale} stale rows in all")
    return keep
