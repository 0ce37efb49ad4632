"""What the audit may read, and when: captured runs whose labels were frozen first.

``load_run`` refuses (StageRefused) unless the journal shows, for that run, a capture entry and then a
label entry whose digests match the files on disk — labels before scores. Only then does it open the
unit table. An ablation study labels nothing (its rubric is ``kind: none``): its runs are read once
the newest capture entry of the run records the digests the tables have now (:func:`load_ablation_run`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lockstep.errors import StageRefused
from lockstep.fsio import sha256_file
from lockstep.units import unit_id

from .label import LABELS


@dataclass(frozen=True)
class RunData:
    run_id: str
    run_dir: Path
    manifest: dict
    prompts: pd.DataFrame  # prompt_id, prompt_class, split, register_label, n_<zone>, spill
    units: pd.DataFrame     # long: prompt_id, layer, expert, zone, n_tokens, n_selected, S, Q, W

    def matrix(self, zone: str, metric: str, prompt_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Prompt × unit matrix of ``metric`` in ``zone`` (rows in ``prompt_ids`` order; unit ids LxEy)."""
        frame = self.units[self.units["zone"] == zone]
        wide = frame.pivot(index="prompt_id", columns=["layer", "expert"], values=metric)
        wide = wide.reindex(index=prompt_ids).sort_index(axis=1)
        ids = [unit_id(layer, expert, "E") for layer, expert in wide.columns]
        return wide.to_numpy(dtype=float), ids


def runs_root(frozen) -> Path:
    return Path(frozen.repo_root) / "runs" / frozen.study_id


def _rel(frozen, path: Path) -> str:
    return path.resolve().relative_to(Path(frozen.repo_root)).as_posix()


def check_labels_before_scores(frozen, run_id: str, run_dir: Path) -> None:
    """Capture recorded, then labels frozen for this run, with the digests the files have now."""
    entries = frozen.journal.entries
    captures = [e for e in entries if e["stage"] == "capture" and run_id in e.get("details", {}).get("runs", [])]
    if not captures:
        raise StageRefused(f"run {run_id!r} of {frozen.study_id} has no capture in the journal",
                           hint=f"run `make capture STUDY={frozen.study_id}` first")
    labels = [e for e in entries if e["stage"] == "label" and e.get("details", {}).get("run") == run_id]
    if not labels or labels[-1]["seq"] < captures[-1]["seq"]:
        raise StageRefused(f"labels of run {run_id!r} are not frozen after its capture, so its scores may not be read",
                           hint=f"run `lockstep label {frozen.root} --run {run_id}` first (labels before scores)")
    texts = run_dir / "texts.parquet"
    label_file = run_dir / LABELS
    if labels[-1]["outputs"].get(_rel(frozen, label_file)) != sha256_file(label_file):
        raise StageRefused(f"{label_file} differs from the labels frozen in the journal (entry {labels[-1]['seq']})",
                           hint="labels cannot change after they are frozen; restore them, or relabel with `lockstep label`")
    if labels[-1]["inputs"].get(_rel(frozen, texts)) != sha256_file(texts):
        raise StageRefused(f"{texts} differs from the texts the labels were made from")


def captured_run_dir(frozen, run_id: str) -> Path:
    """The run's folder; StageRefused when its capture did not complete (no manifest)."""
    run_dir = runs_root(frozen) / run_id
    if not (run_dir / "manifest.json").exists():
        raise StageRefused(f"run {run_id!r} of {frozen.study_id} is not captured ({run_dir}/manifest.json is missing)",
                           hint=f"run `make capture STUDY={frozen.study_id}`")
    return run_dir


def load_run(frozen, run_id: str) -> RunData:
    if frozen.design == "ablation":
        return load_ablation_run(frozen, run_id)
    run_dir = captured_run_dir(frozen, run_id)
    check_labels_before_scores(frozen, run_id, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    texts = pq.read_table(run_dir / "texts.parquet", columns=["prompt_id", "class", "split", "n_prefill", "n_generated",
                                                              "n_trimmed", "n_spill"]).to_pandas()
    labels = pq.read_table(run_dir / LABELS, columns=["prompt_id", "label"]).to_pandas()
    prompts = texts.rename(columns={"class": "prompt_class"}).merge(
        labels.rename(columns={"label": "register_label"}), on="prompt_id", how="left")
    units = pq.read_table(run_dir / "units.parquet").to_pandas()
    return RunData(run_id, run_dir, manifest, prompts.sort_values("prompt_id").reset_index(drop=True), units)


# -- the ablation design ---------------------------------------------------------------------------

ABLATION_TABLES = ("pairs.parquet", "ablations.parquet", "baseline.parquet", "manifest.json")


@dataclass(frozen=True)
class AblationRunData:
    """A captured ablation run (capture/ablation.py). ``prompts`` is the pairs table in the shape the run
    cards read (``prompt_id``, ``prompt_class``, ``split``; ``n_spill`` 0: nothing is generated)."""

    run_id: str
    run_dir: Path
    manifest: dict
    prompts: pd.DataFrame
    pairs: pd.DataFrame      # pair_id, class, split, ..., baseline_clean_margin, excluded, excluded_by
    ablations: pd.DataFrame  # pair_id, mode, target, ablated_clean_margin, clean_drop, ...
    baseline: pd.DataFrame   # pair_id, slot, layer, head, layer_type, ablated_margin, drop (may be empty)

    def analysed_pairs(self, cls: str | None = None, split: str | None = None) -> pd.DataFrame:
        """Pairs left after the preregistered exclusions, of one class and split, sorted by id."""
        keep = ~self.pairs["excluded"].astype(bool)
        if cls is not None:
            keep &= self.pairs["class"] == cls
        if split is not None:
            keep &= self.pairs["split"] == split
        return self.pairs[keep].sort_values("pair_id").reset_index(drop=True)


def check_capture_digests(frozen, run_id: str, run_dir: Path) -> None:
    """Ablation runs have no labels: the newest capture of the run must have recorded the files on disk."""
    captures = [e for e in frozen.journal.entries if e["stage"] == "capture" and run_id in e.get("details", {}).get("runs", [])]
    if not captures:
        raise StageRefused(f"run {run_id!r} of {frozen.study_id} has no capture in the journal",
                           hint=f"run `make capture STUDY={frozen.study_id}` first")
    outputs = captures[-1]["outputs"]
    for name in ABLATION_TABLES:
        path = run_dir / name
        if not path.exists():
            if name == "baseline.parquet":
                continue
            raise StageRefused(f"{path} is missing", hint=f"run `make capture STUDY={frozen.study_id}` again")
        if outputs.get(_rel(frozen, path)) != sha256_file(path):
            raise StageRefused(f"{path} differs from the file the capture recorded in the journal (entry {captures[-1]['seq']})",
                               hint="captured data cannot change after capture; restore it, or capture into a new run")


def load_ablation_run(frozen, run_id: str) -> AblationRunData:
    run_dir = captured_run_dir(frozen, run_id)
    check_capture_digests(frozen, run_id, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    pairs = pq.read_table(run_dir / "pairs.parquet").to_pandas()
    ablations = pq.read_table(run_dir / "ablations.parquet").to_pandas()
    baseline_path = run_dir / "baseline.parquet"
    baseline = pq.read_table(baseline_path).to_pandas() if baseline_path.exists() else pd.DataFrame(
        columns=["pair_id", "slot", "layer", "head", "layer_type", "ablated_margin", "drop"])
    prompts = pd.DataFrame({"prompt_id": pairs["pair_id"], "prompt_class": pairs["class"], "split": pairs["split"],
                            "n_spill": 0})
    return AblationRunData(run_id, run_dir, manifest, prompts.sort_values("prompt_id").reset_index(drop=True),
                           pairs, ablations, baseline)
