"""One vocabulary of artifacts: every path, table name and format version a stage writes or reads.

Layout (relative to the repository root)::

    runs/<study>/<run>/            what capture writes (``--runs-root`` moves ``runs/``; the capture's
                                   journal entry records where, and every later stage reads it there)
    reports/<study>/               what the audit writes: ledger, run cards, tables, report

Paths recorded in the journal are relative to the repository root (:func:`repo_relative`), or absolute
when the file lives outside it. Stages never build these paths by hand: they call the functions here.
"""

from __future__ import annotations

from pathlib import Path

# Versions of the published schemas and of the formats lockstep writes. A reader refuses a version it
# does not know; a change of shape is a new version, never an edit of an old one.
SCHEMA_VERSION = 1           # study, prompts, rubric, thresholds, amendment (the files a researcher writes)
LOCK_FORMAT_VERSION = 1      # prereg.lock.json, amendment.lock.json
JOURNAL_FORMAT_VERSION = 1   # JOURNAL.jsonl entries and JOURNAL.head.json
LEDGER_SCHEMA_VERSION = 1    # reports/<study>/ledger.json
RUN_FORMAT_VERSION = 1       # runs/<study>/<run>/: manifest.json and its tables

RUNS = "runs"
REPORTS = "reports"
MANIFEST = "manifest.json"
LEDGER = "ledger.json"
WORK = "_work"               # a run's scratch folder while it is being captured (not an artifact)
MODELS = "_models"           # builtin demo models, built once under the runs root

# Tables of a run folder, by the name stages call them.
TEXTS = "texts.parquet"
UNITS = "units.parquet"
EVENTS = "events.parquet"
TOKENS = "tokens.parquet"
LABELS = "labels.parquet"
PAIRS = "pairs.parquet"
ABLATIONS = "ablations.parquet"
BASELINE = "baseline.parquet"
SAE_KNOCKDOWN = "sae_knockdown.parquet"
SOURCE_TRACE = "source_trace.parquet"
REFERENCE_MEANS = "reference_means.parquet"


def default_runs_root(repo_root: Path) -> Path:
    """``<repo>/runs``: where capture writes unless told ``--runs-root``."""
    return Path(repo_root) / RUNS


def runs_root_of(frozen, runs_root: Path | None = None) -> Path:
    """The runs root a stage uses: the one given, else ``<repo>/runs``."""
    return Path(runs_root) if runs_root is not None else default_runs_root(frozen.repo_root)


def run_dir(runs_root: Path, study_id: str, run_id: str) -> Path:
    """``<runs root>/<study>/<run>/``."""
    return Path(runs_root) / study_id / run_id


def reports_dir(repo_root: Path, study_id: str) -> Path:
    """``<repo>/reports/<study>/``."""
    return Path(repo_root) / REPORTS / study_id


def repo_relative(path: Path, repo_root: Path | None) -> str:
    """How the journal names ``path``: relative to the repository root, or absolute outside it."""
    resolved = Path(path).resolve()
    if repo_root is None:
        return resolved.as_posix()
    try:
        return resolved.relative_to(Path(repo_root).resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def from_journal(base: Path, recorded: str) -> Path:
    """The file a journal path names, seen from ``base`` (the repository root, or an unpacked bundle)."""
    path = Path(recorded)
    return path if path.is_absolute() else Path(base) / path


def captured_runs_root(journal, run_id: str, base: Path) -> Path | None:
    """Where the newest capture entry of ``run_id`` says its runs root is (None: no capture names it)."""
    captures = journal.captures_of(run_id) if journal is not None else []
    if not captures:
        return None
    recorded = captures[-1].get("details", {}).get("runs_root")
    return from_journal(base, recorded) if recorded else default_runs_root(base)


def study_run_dir(frozen, run_id: str, base: Path | None = None) -> Path:
    """The folder of a captured run as the journal records it (``<repo>/runs/<study>/<run>`` by default).

    ``base`` replaces the repository root, for a bundle unpacked elsewhere.
    """
    base = Path(base if base is not None else frozen.repo_root)
    root = captured_runs_root(frozen.journal, run_id, base)
    return run_dir(root if root is not None else default_runs_root(base), frozen.study_id, run_id)
