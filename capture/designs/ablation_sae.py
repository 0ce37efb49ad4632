"""Capture of ``sae_knockdown`` analyses (ablation design): SAE feature knockdown on the contrastive pairs.

For each SAE an ``sae_knockdown`` analysis names (``ablation.saes``), on the pairs left after the
preregistered exclusions (their clean prompts only):

1. the checkpoint is read only if its sha256 is the one study.yaml pins (the lock covers the pin);
2. one forward per batch of pairs with the SAE's reconstruction spliced in at the last token
   (``splice_in`` rows: the margin when the SAE output replaces the activation), recording the
   activation at the hook point at every real token (for the reconstruction variance explained:
   per pair its token count, the summed squared reconstruction error, the summed squared norm and the
   summed activation vector) and every feature's activation at the last token (which features are
   active on which pair);
3. on the pairs an analysis on that SAE reads (its class and split), each feature to test (the
   analyses' ``features``, their ``feature``, and for ``all_active`` every feature active on at least ``min_active_pairs`` analysed pairs of the analysis's class and split)
   knocked down alone, error term kept (``x' = x - z_f W_dec[f]`` at the last token), on the pairs where
   it is active: a feature inactive on a pair leaves it untouched (:class:`capture.sae.FeatureKnockdown`
   only moves rows where ``z_f > 0``), so its knocked margin there is the unablated one and no forward
   is spent on it. Several (pair, feature) rows share one forward (``batch_size x slots_per_forward`` rows).

Rows of ``sae_knockdown.parquet``: ``condition`` ``knockdown`` (one per SAE x feature x active pair)
or ``splice_in`` (one per SAE x analysed pair); ``drop`` = unablated clean margin - margin.

Resumable: the splice pass and each knockdown forward are kept in the run's ``_work/sae_knockdown/<sae>/``
as they finish, and a capture killed in between reads them back and runs only the forwards left (the
manifest's ``forwards`` and ``seconds`` per SAE are those of the process that finished the run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lockstep import artifacts
from lockstep.errors import CaptureError
from lockstep.fsio import atomic_write, pretty_json, sha256_file

from ..sae import SAELENS_CONFIG, SAELENS_WEIGHTS, FeatureKnockdown, TopKSAE, load_sae
from ..store import disk_errors, write_table

KIND = "sae_knockdown"
KNOCKDOWN, SPLICE = "knockdown", "splice_in"
SAE_SCHEMA = pa.schema([
    ("sae", pa.string()), ("condition", pa.string()), ("feature", pa.int64()), ("pair_id", pa.string()),
    ("activation", pa.float64()), ("baseline_margin", pa.float64()), ("margin", pa.float64()), ("drop", pa.float64()),
    ("n_tokens", pa.int64()), ("sse", pa.float64()), ("sum_sq", pa.float64()), ("sum_x", pa.list_(pa.float64())),
])


def analyses_of(frozen) -> list[dict]:
    return [a for a in frozen.analyses if a["kind"] == KIND]


def needed(frozen) -> bool:
    """True when an analysis of the study is an ``sae_knockdown`` (the table is written only then)."""
    return bool(analyses_of(frozen))


def _digest_problem(path: Path, actual: str, expected: str, pointer: str) -> CaptureError:
    return CaptureError(f"{path}: sha256 {actual} differs from {expected}, which study.yaml {pointer} pins",
                        hint="the SAE changed since the freeze: restore the preregistered file, or amend the study with the new digest")


def load_study_sae(repo_root: Path, entry: dict, index: int) -> TopKSAE:
    """The SAE of ``/ablation/saes/<index>``, read only when its file digests are the pinned ones."""
    relative = entry["path"]
    pointer = f"/ablation/saes/{index}"
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise CaptureError(f"study.yaml {pointer}/path {relative!r} is not a plain path relative to the repository root")
    path = Path(repo_root) / relative
    pinned = entry["sha256"]
    if entry["format"] == "saelens":
        if not isinstance(pinned, dict):
            raise CaptureError(f"study.yaml {pointer}/sha256 is one digest, but an SAELens SAE is a folder",
                               hint=f"pin each file: sha256: {{{SAELENS_CONFIG}: ..., {SAELENS_WEIGHTS}: ...}}")
        files = {name: path / name for name in (SAELENS_CONFIG, SAELENS_WEIGHTS)}
    else:
        if not isinstance(pinned, str):
            raise CaptureError(f"study.yaml {pointer}/sha256 is a mapping, but a {entry['format']} SAE is one file",
                               hint="pin the file's sha256 as one string")
        files = {None: path}
    for name, file in files.items():
        if not file.is_file():
            raise CaptureError(f"SAE {entry['id']!r}: {file} does not exist (study.yaml {pointer}/path)",
                               hint="put the preregistered checkpoint there")
        expected = pinned[name] if name else pinned
        actual = sha256_file(file)
        if actual != expected:
            raise _digest_problem(file, actual, expected, f"{pointer}/sha256" + (f"/{name}" if name else ""))
    norm = entry["normalization"]
    return load_sae(path, entry["format"], k=entry["k"], scaling=norm["kind"], scale=float(norm.get("scale", 1.0)),
                    width=entry["width"])


def check_saes(frozen, model) -> None:
    """Every SAE an sae_knockdown analysis names: its digests as pinned, readable, and fitting the model's
    residual stream and layers at its hook point (CaptureError otherwise, before any forward)."""
    if not needed(frozen):
        return
    if frozen.spec["ablation"]["answer_tokenization"] != "first_token":
        raise CaptureError("sae_knockdown reads the first-token margin at the last position; this study scores full_answer",
                           hint="knock SAE features down in a study with answer_tokenization: first_token")
    entries = {e["id"]: (j, e) for j, e in enumerate(frozen.spec["ablation"].get("saes", []))}
    for sae_id in sorted({a["sae"] for a in analyses_of(frozen)}):
        j, entry = entries[sae_id]
        FeatureKnockdown(model, load_study_sae(frozen.repo_root, entry, j), entry["hook_point"])


class _Splice(FeatureKnockdown):
    """Replace the activation at the last token by the SAE's reconstruction in the rows marked (any feature
    index), and keep the activation the forward had at the hook point (every position)."""

    def _delta(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().float()
        delta = torch.zeros_like(x, dtype=torch.float32)
        last = x[:, -1:].float()
        keep = (features >= 0).to(x.device).view(-1, 1, 1)
        delta[:, -1:] = (self.sae.reconstruct(last) - last) * keep
        return delta


def _live(prep) -> list[dict]:
    return [r for r in prep.pairs.to_pylist() if not r["excluded"]]


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _splice_pass(fwd, sae: TopKSAE, point: str, pairs: list[dict], batch_size: int, sae_id: str, model) -> tuple[list[dict], dict]:
    """Splice-in margins, variance-explained sums per pair, and each pair's active features at the last token."""
    splice = _Splice(model, sae, point)
    rows, active = [], {}
    for chunk in _batches(pairs, batch_size):
        ids = [p["clean_token_ids"] for p in chunk]
        _, mask, _ = fwd.batch(ids)
        with splice.knocking([0] * len(chunk)):
            m = fwd.margins(ids, [p["answer_token_id"] for p in chunk], [p["wrong_token_id"] for p in chunk])
        x = splice.seen
        with torch.inference_mode():
            err = (sae.reconstruct(x) - x).pow(2).sum(-1).cpu().double()     # [R, T]
            sq = x.pow(2).sum(-1).cpu().double()
            z_last = sae.encode(x[:, -1]).cpu()
        keep = mask.bool()
        for r, p in enumerate(chunk):
            on = keep[r]
            rows.append({"sae": sae_id, "condition": SPLICE, "feature": None, "pair_id": p["pair_id"], "activation": None,
                         "baseline_margin": p["baseline_clean_margin"], "margin": float(m[r]),
                         "drop": p["baseline_clean_margin"] - float(m[r]), "n_tokens": int(on.sum()),
                         "sse": float(err[r][on].sum()), "sum_sq": float(sq[r][on].sum()),
                         "sum_x": x[r][on.to(x.device)].double().sum(0).cpu().tolist()})
            nz = torch.nonzero(z_last[r] > 0).flatten().tolist()
            active[p["pair_id"]] = {int(f): float(z_last[r, f]) for f in nz}
    return rows, active


def features_to_test(frozen, sae_id: str, pairs: list[dict], active: dict[str, dict[int, float]]) -> list[int]:
    """Every feature the analyses on ``sae_id`` test (listed, named, or active on enough of their pairs)."""
    out: set[int] = set()
    for a in analyses_of(frozen):
        if a["sae"] != sae_id:
            continue
        if "feature" in a:
            out.add(int(a["feature"]))
        if a["features"] == "all_active":
            mine = [p for p in pairs if p["class"] == a["pairs"] and ("split" not in a or p["split"] == a["split"])]
            counts: dict[int, int] = {}
            for p in mine:
                for f in active[p["pair_id"]]:
                    counts[f] = counts.get(f, 0) + 1
            out |= {f for f, n in counts.items() if n >= int(a["min_active_pairs"])}
        else:
            out |= {int(f) for f in a["features"]}
    return sorted(out)


def _read_by(frozen, sae_id: str, pair: dict) -> bool:
    """True when an analysis on ``sae_id`` reads ``pair`` (its class, and its split when it names one)."""
    return any(a["sae"] == sae_id and pair["class"] == a["pairs"] and a.get("split", pair["split"]) == pair["split"]
               for a in analyses_of(frozen))


def knockdown_rows(fwd, knock: FeatureKnockdown, pairs: list[dict], active: dict[str, dict[int, float]],
                   features: list[int], rows_per_forward: int, sae_id: str, parts: Path | None = None) -> list[dict]:
    """Each feature knocked down alone on each pair where it is active; several (pair, feature) rows per forward.

    With ``parts`` (a folder in the run's ``_work/``), each forward's rows are written there as it finishes
    (``k<index>.parquet``, atomically) and a forward whose part is on disk is read back, not run again: a
    capture killed here resumes where it stopped. The plan (features × the pairs where each is active) is the
    same on a resume, since the active features are read back from the splice pass's part."""
    plan = [(f, p) for f in features for p in pairs if f in active[p["pair_id"]]]
    out = []
    for index, chunk in enumerate(_batches(plan, rows_per_forward)):
        part = None if parts is None else parts / f"k{index:05d}.parquet"
        if part is not None and part.is_file():
            out += pq.read_table(part, schema=SAE_SCHEMA).to_pylist()
            continue
        rows = _knock_chunk(fwd, knock, chunk, sae_id)
        if part is not None:
            with disk_errors(part.parent):
                write_table(part, pa.Table.from_pylist(rows, schema=SAE_SCHEMA))
        out += rows
    return out


def _knock_chunk(fwd, knock: FeatureKnockdown, chunk: list[tuple[int, dict]], sae_id: str) -> list[dict]:
    """One forward: each (feature, pair) row of ``chunk`` with its feature knocked down."""
    ids = [p["clean_token_ids"] for _, p in chunk]
    with knock.knocking([f for f, _ in chunk]):
        m = fwd.margins(ids, [p["answer_token_id"] for _, p in chunk], [p["wrong_token_id"] for _, p in chunk])
    return [{"sae": sae_id, "condition": KNOCKDOWN, "feature": int(f), "pair_id": p["pair_id"],
             "activation": float(knock.activations[r]), "baseline_margin": p["baseline_clean_margin"],
             "margin": float(m[r]), "drop": p["baseline_clean_margin"] - float(m[r]),
             "n_tokens": None, "sse": None, "sum_sq": None, "sum_x": None} for r, (f, p) in enumerate(chunk)]


def _splice_kept(parts: Path, fwd, sae: TopKSAE, point: str, pairs: list[dict], batch_size: int, sae_id: str,
                 model) -> tuple[list[dict], dict]:
    """:func:`_splice_pass`, kept in ``parts`` for a resume (its rows and each pair's active features)."""
    table, actives = parts / "splice.parquet", parts / "active.json"
    if table.is_file() and actives.is_file():
        active = {pid: {int(f): z for f, z in on.items()} for pid, on in json.loads(actives.read_text()).items()}
        return pq.read_table(table, schema=SAE_SCHEMA).to_pylist(), active
    rows, active = _splice_pass(fwd, sae, point, pairs, batch_size, sae_id, model)
    with disk_errors(parts):
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write(actives, pretty_json({pid: {str(f): z for f, z in on.items()} for pid, on in active.items()}))
        write_table(table, pa.Table.from_pylist(rows, schema=SAE_SCHEMA))
    return rows, active


def capture(frozen, st, fwd, prep, store, say) -> dict[str, Any]:
    """Write ``sae_knockdown.parquet`` into the run folder; return what the manifest records (per SAE: the
    checkpoint, its digests, the features knocked down, forwards and seconds)."""
    entries = {e["id"]: (j, e) for j, e in enumerate(frozen.spec["ablation"].get("saes", []))}
    pairs = _live(prep)
    rows, info = [], {}
    for sae_id in sorted({a["sae"] for a in analyses_of(frozen)}):
        j, entry = entries[sae_id]
        start, before = time.perf_counter(), fwd.forwards
        sae = load_study_sae(frozen.repo_root, entry, j)
        knock = FeatureKnockdown(st.ld.model, sae, entry["hook_point"])
        parts = store.work / "sae_knockdown" / sae_id  # kept for a resume; dropped with _work/ at the end
        splice_rows, active = _splice_kept(parts, fwd, sae, entry["hook_point"], pairs, st.batch_size, sae_id,
                                           st.ld.model)
        features = features_to_test(frozen, sae_id, pairs, active)
        say(f"  sae_knockdown {sae_id} at {entry['hook_point']}: {len(features)} feature(s) on {len(pairs)} pairs")
        read = [p for p in pairs if _read_by(frozen, sae_id, p)]
        knocked = knockdown_rows(fwd, knock, read, active, features, st.batch_size * st.stack, sae_id, parts)
        rows += splice_rows + knocked
        info[sae_id] = {"path": entry["path"], "format": entry["format"], "sha256": entry["sha256"],
                        "hook_point": entry["hook_point"], "width": sae.n_features, "k": sae.k,
                        "normalization": entry["normalization"], "features_tested": features,
                        "knockdown_rows": len(knocked), "pairs": len(pairs),
                        "forwards": fwd.forwards - before, "seconds": time.perf_counter() - start}
    rows.sort(key=lambda r: (r["sae"], r["condition"] != SPLICE, -1 if r["feature"] is None else r["feature"], r["pair_id"]))
    with disk_errors(store.root):
        write_table(store.root / artifacts.SAE_KNOCKDOWN, pa.Table.from_pylist(rows, schema=SAE_SCHEMA))
    return info
