"""Bundles: one archive with everything a reviewer on another machine needs to run ``lockstep verify``.

The archive holds ``preregistrations/<study>/``, ``runs/<study>/`` and ``reports/<study>/`` at their
repository-relative paths, so the journal's paths resolve inside the unpacked folder.

A bundle may come from a stranger, so unpacking trusts nothing in it (:func:`unpacked`):

- it is read as a stream, headers first, and refused (:class:`~lockstep.errors.BundleRefused`, exit 2)
  as soon as it holds more than ``max_members`` members or its files add up to more than ``max_bytes``
  (the sizes its headers declare): a refused bundle writes nothing; a bundle that passes is then
  unpacked in a second pass that repeats every check;
- every member is a regular file or a folder under ``preregistrations/``, ``runs/`` or ``reports/``, at a
  plain relative path (no absolute path, no ``..``, no link, no device, no name twice), and is extracted
  through tarfile's ``data`` filter as well;
- a truncated or corrupt archive is refused with what went wrong, never a half-read study.

Once unpacked, every path the journal records must stay inside the bundle (:func:`verify_journal_paths`,
which the reviewer runs on study folders too), and everything the journal says the stages wrote must be
in it (:func:`verify_bundle_contents`, the one step of :data:`BUNDLE_STEPS`): a bundle says what it does
not contain.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import artifacts
from .errors import BundleRefused, LockMismatch, UsageError, bounded
from .lock import study_dir_iv
from .provenance import repo_root
from .study import plain_relative

SUFFIX = ".bundle.tar.gz"
TOP_FOLDERS = ("preregistrations", artifacts.RUNS, artifacts.REPORTS)


@dataclass(frozen=True)
class Limits:
    """What a bundle may expand to. ``lockstep verify --max-bundle-bytes/--max-bundle-members`` change them."""

    max_bytes: int = 1 << 30        # 1 GiB of files in all
    max_members: int = 10_000       # files and folders (a bundle holds a few dozen)

    def __post_init__(self):
        for name in ("max_bytes", "max_members"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BundleRefused(f"`{name}` must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()


def is_bundle(target: Path) -> bool:
    target = Path(target)
    return target.name.endswith(SUFFIX) and target.is_file()


def write_bundle(study_dir: Path, out: Path | None = None) -> Path:
    study_dir = study_dir_iv(study_dir)
    root = repo_root(study_dir)
    study_id = study_dir.name
    if out is not None and not str(out).endswith(SUFFIX):
        raise UsageError(f"--out {out}: a bundle's name ends in {SUFFIX}, which is how `lockstep verify` knows it from a folder",
                         hint=f"e.g. --out {Path(out).name.split('.')[0] or study_id}{SUFFIX}")
    out = Path(out) if out else artifacts.reports_dir(root, study_id) / f"{study_id}{SUFFIX}"
    members = [study_dir, artifacts.default_runs_root(root) / study_id, artifacts.reports_dir(root, study_id)]
    files = _discovery_members(study_dir, root)
    for folder in members:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_symlink():
                raise BundleRefused(f"{path} is a symbolic link; a bundle holds regular files only",
                                    hint="replace the link with the file it points to, then bundle again")
            if path.is_file() and not path.name.endswith((SUFFIX, ".capture.lock")) and path.resolve() != out.resolve():
                files.append(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # streamed into a temp file beside ``out`` and renamed over it: never in memory whole, never half-written
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w:gz") as tar:
                for path in files:
                    tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _discovery_members(study_dir: Path, root: Path) -> list[Path]:
    """A study proposed from a discovery run carries what verify reads of it: the discovery study's journal
    (and its head) and the record and tables its discover entry wrote, where they are on this machine."""
    import json

    import yaml

    try:
        source = (yaml.safe_load((study_dir / "study.yaml").read_text(encoding="utf-8")) or {}).get("discovery_source")
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(source, dict) or not isinstance(source.get("study"), str):
        return []
    where = root / source["study"]
    out = [where / name for name in ("JOURNAL.jsonl", "JOURNAL.head.json") if (where / name).is_file()]
    try:
        entry = json.loads((where / "JOURNAL.jsonl").read_bytes().splitlines()[int(source.get("journal_seq", -1))])
        out += [root / rel for rel in entry.get("outputs", {})
                if (root / rel).is_file() and _within((root / rel).resolve(), root.resolve())]
    except (OSError, ValueError, IndexError, TypeError):
        pass
    return out


@contextmanager
def unpacked(target: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[Path]:
    """A study folder: ``target`` itself, or the study inside a bundle unpacked into a temp folder
    (BundleRefused if the bundle cannot be unpacked safely within ``limits``)."""
    target = Path(target)
    if not is_bundle(target):
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="lockstep-bundle-") as tmp:
        _extract(target, Path(tmp), limits)
        studies = sorted(p.parent for p in Path(tmp).glob("preregistrations/*/study.yaml"))
        if len(studies) != 1:
            raise BundleRefused(f"{target} holds {len(studies)} studies (preregistrations/<study>/study.yaml); "
                                "a bundle holds exactly one", hint="ask for the bundle `lockstep bundle STUDY` writes")
        yield studies[0]


def _extract(target: Path, dest: Path, limits: Limits) -> None:
    """Unpack ``target`` into ``dest``: a first pass reads the headers and checks every member (count,
    sizes, names, types) writing nothing; the second unpacks, repeating the checks and adding the data filter."""
    fix = "the archive is truncated or corrupt: ask for a fresh copy (`lockstep bundle STUDY` writes one)"
    try:
        with gzip.open(target, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:  # first pass: nothing written
            for _ in _checked_members(tar, target, limits):
                pass
            _drain(raw, target)
        with tarfile.open(target, mode="r|gz") as tar:  # second pass: the same checks, and the data filter
            tar.extractall(dest, members=_checked_members(tar, target, limits), **_DATA_FILTER)
    except BundleRefused:
        raise
    except _FILTER_ERROR as exc:
        raise BundleRefused(f"{target}: a member is refused by tarfile's data filter ({bounded(str(exc), 200)})",
                            hint="a bundle holds regular files inside its own folders only") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BundleRefused(f"{target} is not a readable lockstep bundle ({bounded(str(exc), 200) or type(exc).__name__})",
                            hint=fix) from exc
    except OSError as exc:  # a gzip error (BadGzipFile) or the disk the bundle is unpacked onto
        raise BundleRefused(f"{target} could not be unpacked ({bounded(str(exc), 200)})",
                            hint=fix + "; or, if the disk is full, free space in the temp folder (TMPDIR)") from exc


def _drain(raw, target: Path) -> None:
    """Read the gzip stream to its end, so that gzip checks its CRC and length (tarfile stops at the
    archive's end marker and checks neither); what follows the archive may be its padding, not a bomb."""
    left = _TRAILER_BYTES
    while block := raw.read(1 << 16):
        left -= len(block)
        if left < 0:
            raise BundleRefused(f"{target} has more than {_TRAILER_BYTES:,} bytes after the end of its archive",
                                hint="a bundle is one tar archive; ask for the bundle `lockstep bundle STUDY` writes")


_TRAILER_BYTES = 1 << 20   # tar pads its end to a record (10 KiB); anything near a MiB past it is not a bundle


# tarfile's ``data`` filter (Python 3.12, and 3.11.4+): absolute paths, escapes, links out and special
# files refused, modes made safe. The member checks above refuse all of these already; the filter is a
# second fence where Python has it.
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERROR = getattr(tarfile, "FilterError", BundleRefused)


def _checked_members(tar: tarfile.TarFile, target: Path, limits: Limits) -> Iterator[tarfile.TarInfo]:
    total = 0
    seen: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > limits.max_members:
            raise BundleRefused(f"{target} holds more than {limits.max_members:,} members; refused, nothing unpacked",
                                hint="a lockstep bundle holds a few dozen files; if this one is genuine, raise the limit "
                                     "with `lockstep verify --max-bundle-members N`")
        name = member.name
        _check_member_name(name, target)
        if name.rstrip("/") in seen:
            raise BundleRefused(f"{target}: member {bounded(repr(name), 200)} appears twice; a later copy would replace the first",
                                hint="a bundle holds each file once")
        seen.add(name.rstrip("/"))
        if member.isdir():
            pass
        elif member.isfile():
            total += member.size
            if total > limits.max_bytes:
                raise BundleRefused(f"{target} expands to more than {limits.max_bytes:,} bytes (at member "
                                    f"{bounded(repr(name), 200)}); refused, nothing unpacked",
                                    hint="if this bundle is genuine, raise the limit with `lockstep verify --max-bundle-bytes N`")
        else:
            kind = "link" if member.issym() or member.islnk() else "device, FIFO or other special file"
            raise BundleRefused(f"{target}: member {bounded(repr(name), 200)} is a {kind}; a bundle holds regular files and folders only",
                                hint="do not unpack this archive by hand; ask for the bundle `lockstep bundle STUDY` writes")
        yield member


def _check_member_name(name: str, target: Path) -> None:
    clean = name.rstrip("/") if name.endswith("/") else name
    if not plain_relative(clean) or PurePosixPath(clean).parts[0] not in TOP_FOLDERS:
        raise BundleRefused(f"{target}: member {bounded(repr(name), 200)} would land outside the bundle's folders "
                            f"({', '.join(f'{t}/' for t in TOP_FOLDERS)}); absolute paths, '..' and other folders are refused",
                            hint="do not unpack this archive by hand; ask for the bundle `lockstep bundle STUDY` writes")


# ---------------------------------------------------------------- steps run on an unpacked bundle

def _bundle_root(ctx) -> Path:
    return ctx.bundle if ctx.bundle is not None else ctx.study_dir.parent.parent


def _recorded_paths(journal) -> list[tuple[int, str, str]]:
    """Every path the journal records, as (entry, what, path)."""
    out = []
    for e in journal.entries:
        for key in ("inputs", "outputs"):
            out.extend((e["seq"], key[:-1], path) for path in e.get(key, {}))
        runs_root = e.get("details", {}).get("runs_root")
        if isinstance(runs_root, str):
            out.append((e["seq"], "runs root", runs_root))
    return out


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def verify_journal_paths(ctx) -> str:
    """Every path the journal records stays where lockstep writes, so that no later step reads a file of
    the machine verifying it (``/etc/hostname``, ``../../x``): a plain relative path inside the repository
    (or the unpacked bundle), or, in a study folder, an absolute path inside ``<runs root>/<study>/`` of a
    runs root a capture recorded (``--runs-root`` outside the repository). A bundle holds no absolute path."""
    base = (ctx.bundle if ctx.bundle is not None else (ctx.root or _bundle_root(ctx))).resolve()
    study = ctx.study_dir.resolve()
    study_id = ctx.lock["study_id"]
    recorded = _recorded_paths(ctx.journal)
    roots = [Path(p) / study_id for _, what, p in recorded
             if what == "runs root" and p.startswith("/") and plain_relative(p.lstrip("/"))]
    bad = []
    for seq, what, path in recorded:
        if path.startswith("/"):
            ok = (ctx.bundle is None and plain_relative(path.lstrip("/"))
                  and (what == "runs root" or any(_within(Path(path), root) for root in roots)))
        else:
            # the freeze and amendments name files relative to the study folder, the other stages relative to the repository
            where = base if path.split("/", 1)[0] in TOP_FOLDERS or what == "runs root" else study
            ok = plain_relative(path) and _within((where / path).resolve(), base)
        if not ok:
            bad.append(f"journal entry {seq} {what} {bounded(repr(path), 200)}")
    if bad:
        inside = "the bundle" if ctx.bundle is not None else "the repository or a runs root a capture recorded"
        raise LockMismatch(f"the journal names paths outside {inside}, which verify will not read:\n"
                           + "\n".join(f"  - {b}" for b in bad[:20]) + (f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""),
                           hint=("runs captured under a --runs-root outside the repository cannot travel in a bundle; "
                                 if ctx.bundle is not None and any("'/" in b for b in bad) else "")
                                + "lockstep records no such path: this journal was edited")
    where = "the bundle" if ctx.bundle is not None else "the repository" + (" and the recorded runs roots" if roots else "")
    return f"the journal's {len(recorded)} recorded path(s) stay inside {where}"


def verify_bundle_contents(ctx) -> str:
    """The bundle holds what the journal says the stages wrote: the runs of every capture, and the report
    folder with the ledger of every audit. A missing part is an alteration, named as such."""
    root = _bundle_root(ctx)
    study_id = ctx.lock["study_id"]
    entries = ctx.journal.entries
    captures = [e for e in entries if e["stage"] == "capture"]
    audits = [e for e in entries if e["stage"] == "audit"]
    missing = []
    runs = sorted({run for e in captures for run in e.get("details", {}).get("runs", [])})
    runs_dir = artifacts.default_runs_root(root) / study_id
    if captures and not runs_dir.is_dir():
        missing.append(f"bundle has no {artifacts.RUNS}/{study_id}: captures cannot be checked "
                       f"(journal entries {', '.join(str(e['seq']) for e in captures)} recorded runs {', '.join(runs)})")
    elif captures:
        absent = [r for r in runs if not (runs_dir / r).is_dir()]
        if absent:
            missing.append(f"bundle has no {artifacts.RUNS}/{study_id}/{{{', '.join(absent)}}}: those captures cannot be checked")
    reports = artifacts.reports_dir(root, study_id)
    if audits and not reports.is_dir():
        missing.append(f"bundle has no {artifacts.REPORTS}/{study_id}: the audit (journal entry {audits[-1]['seq']}) "
                       "and its ledger cannot be checked")
    elif audits and not (reports / artifacts.LEDGER).is_file():
        missing.append(f"bundle has no {artifacts.REPORTS}/{study_id}/{artifacts.LEDGER}: the ledger of the audit "
                       f"(journal entry {audits[-1]['seq']}) cannot be recomputed and compared")
    if missing:
        raise LockMismatch("the bundle lacks what the journal says the stages wrote:\n" + "\n".join(f"  - {m}" for m in missing),
                           hint="ask for a complete bundle: `lockstep bundle STUDY` on the machine that ran the stages")
    held = ["plan, lock and journal"]
    if captures:
        held.append(f"{artifacts.RUNS}/{study_id} ({len(runs)} run(s))")
    if audits:
        held.append(f"{artifacts.REPORTS}/{study_id} with the ledger")
    stages = "" if captures or audits else "; the journal records no capture or audit yet"
    return f"bundle holds {', '.join(held)}{stages}"


BUNDLE_STEPS = [verify_bundle_contents]
