"""Witnesses of order from outside the study folder: SSH signatures, RFC 3161 timestamps and the lock's commit.

A hash chain proves that nothing changed since it was written, not when it was written or by whom:
whoever can write the folder can recompute the chain. This module gives a reviewer evidence that the
researcher cannot rewrite later, and says how strong it is.

Everything lives in ``<study>/witness/`` (never part of the lock, never inside a journal entry, so the
hash chain's format does not change)::

    witness/signatures/<entry sha256>.sig     ssh-keygen -Y sign over the entry's statement (more
                                              signers of one entry: <entry sha256>.<n>.sig)
    witness/timestamps/<digest>.tst           an RFC 3161 token (DER) over the lock digest or an entry's sha256
    witness/allowed_signers                   a git-style allowed-signers file (optional: a reviewer
                                              passes their own with --allowed-signers)
    witness/tsa-ca.pem                        the TSA's CA certificate(s) (optional: --tsa-ca)

What is signed is :func:`statement` of an entry's sha256 (the sha256 of its line in ``JOURNAL.jsonl``);
the entry carries ``prev_sha256``, so a signature over entry n commits to every entry before it. Stage
entries are signed in the namespace ``lockstep``, review approvals in ``lockstep-review`` (an
allowed-signers line with ``namespaces="lockstep"`` can sign stages but not approvals).

Evidence levels, weakest first (:data:`LEVELS`): ``self-attested`` (the hash chain only), ``signed``
(every stage entry carries a valid signature from an allowed signer), ``timestamped`` (the base lock
digest carries an RFC 3161 token that verifies against the TSA's CA and whose time precedes the first
capture entry).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .errors import ChainBroken, GitError, LockMismatch, StageRefused, UsageError
from .fsio import atomic_write, sha256_bytes
from .journal import Journal, read_journal
from .lock import AMENDMENT_LOCK, LOCK, SUMS, amendment_dirs
from .provenance import _git, dirty_files, is_ancestor

WITNESS = "witness"
SIGNATURES = "signatures"
TIMESTAMPS = "timestamps"
ALLOWED_SIGNERS = "allowed_signers"
TSA_CA = "tsa-ca.pem"
REPO_TRUST_DIR = ".lockstep"          # <repo>/.lockstep/allowed_signers and tsa-ca.pem: the fallback
NAMESPACE = "lockstep"
REVIEW_NAMESPACE = "lockstep-review"
SIGN_KEY_ENV = "LOCKSTEP_SIGNING_KEY"
LEVELS = ("self-attested", "signed", "timestamped")
ORDER_STAGES = ("prereg", "amend", "capture", "label", "audit")  # the stages whose order is the claim
_SIG_NAME = re.compile(r"^([0-9a-f]{64})(?:\.([1-9][0-9]{0,5}))?\.sig$")
_TST_NAME = re.compile(r"^([0-9a-f]{64})\.tst$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- paths and trust files

def witness_dir(study_dir: Path) -> Path:
    return Path(study_dir) / WITNESS


def trust_file(study_dir: Path, root: Path | None, name: str, given: Path | None) -> tuple[Path | None, str]:
    """The file to trust for ``name`` and where it came from: the one given, else ``<study>/witness/<name>``,
    else ``<repo>/.lockstep/<name>``; (None, why) when there is none."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise UsageError(f"{given} does not exist", hint=f"pass the path of an existing {name} file")
        return given, f"{given} (given)"
    inside = witness_dir(study_dir) / name
    if inside.is_file():
        return inside, f"{inside} (in the study folder: the researcher's list; pass your own to trust it less)"
    if root is not None and (Path(root) / REPO_TRUST_DIR / name).is_file():
        path = Path(root) / REPO_TRUST_DIR / name
        return path, f"{path} (in the repository: the researcher's list; pass your own to trust it less)"
    return None, f"no {name} (none given, none in {WITNESS}/ or {REPO_TRUST_DIR}/)"


# ---------------------------------------------------------------- tools

def _run(tool: str, args: list[str], *, stdin: bytes | None = None, timeout: float | None = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([tool, *args], input=stdin, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        package = "openssh-client" if tool == "ssh-keygen" else "openssl"
        raise UsageError(f"{tool} is not installed; lockstep's witnesses use it", hint=f"install it (apt install {package})") from exc
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"{tool} {args[0]} did not finish in {timeout} s") from exc


def _err(result: subprocess.CompletedProcess) -> str:
    """The last line a tool printed on stderr (else stdout), or its exit status."""
    lines = (result.stderr or result.stdout or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


# ---------------------------------------------------------------- signatures

def statement(entry_sha256: str) -> bytes:
    """The bytes a signer signs for one journal entry."""
    return f"lockstep journal entry sha256:{entry_sha256}\n".encode()


def namespace_of(stage: str) -> str:
    return REVIEW_NAMESPACE if stage == "review" else NAMESPACE


def key_fingerprint(key: Path) -> str:
    """``SHA256:...`` of an SSH key file (private or public); UsageError naming the file if it is not one."""
    key = Path(key)
    if not key.is_file():
        raise UsageError(f"signing key {key} does not exist", hint=f"pass --sign-key PATH (or set {SIGN_KEY_ENV}) to an SSH private key, e.g. made with `ssh-keygen -t ed25519`")
    result = _run("ssh-keygen", ["-l", "-E", "sha256", "-f", str(key)])
    match = re.search(rb"(SHA256:\S+)", result.stdout)
    if result.returncode != 0 or not match:
        raise UsageError(f"{key} is not an SSH key ({_err(result)})", hint="make one with `ssh-keygen -t ed25519 -f KEYFILE`")
    return match.group(1).decode()


@dataclass(frozen=True)
class Signature:
    """One signature file, as checked: ``principal`` is None unless an allowed signer's key made it."""

    path: str
    entry_sha256: str
    seq: int | None                # None: signs an entry that is not in the journal
    stage: str | None
    fingerprint: str | None        # None: the signature does not verify at all
    principal: str | None
    note: str

    @property
    def counts(self) -> bool:
        return self.seq is not None and self.principal is not None


def _signature_files(study_dir: Path) -> list[Path]:
    folder = witness_dir(study_dir) / SIGNATURES
    return sorted(p for p in folder.iterdir()) if folder.is_dir() else []


def _entry_hashes(journal: Journal) -> dict[str, int]:
    return {sha256_bytes(line): seq for seq, line in enumerate(journal.lines)}


def sign_entry(study_dir: Path, journal: Journal, seq: int, key: Path) -> Path:
    """Sign journal entry ``seq`` with ``key``; return the signature file (the existing one if this key signed it)."""
    fingerprint = key_fingerprint(key)
    entry_sha = sha256_bytes(journal.lines[seq])
    folder = witness_dir(study_dir) / SIGNATURES
    taken = [p for p in _signature_files(study_dir) if (m := _SIG_NAME.match(p.name)) and m.group(1) == entry_sha]
    for path in taken:
        if _fingerprint_of(path, entry_sha, namespace_of(journal.entries[seq]["stage"])) == fingerprint:
            return path
    with tempfile.TemporaryDirectory(prefix="lockstep-sign-") as tmp:
        message = Path(tmp) / "entry"
        message.write_bytes(statement(entry_sha))
        # a file argument rather than stdin: a passphrase prompt then reads the terminal, not the message
        result = _run("ssh-keygen", ["-q", "-Y", "sign", "-f", str(key), "-n", namespace_of(journal.entries[seq]["stage"]), str(message)], timeout=None)
        signed = Path(tmp) / "entry.sig"
        if result.returncode != 0 or not signed.is_file():
            raise UsageError(f"ssh-keygen could not sign with {key}: {_err(result)}",
                             hint="check the key (a passphrase-protected key needs a terminal or ssh-agent)")
        data = signed.read_bytes()
    names = {p.name for p in taken}
    name = next(n for n in [f"{entry_sha}.sig"] + [f"{entry_sha}.{i}.sig" for i in range(2, 10**6)] if n not in names)
    atomic_write(folder / name, data)
    return folder / name


def sign_entries(study_dir: Path, key: Path, seqs: list[int] | None = None) -> list[tuple[int, Path]]:
    """Sign entries ``seqs`` (default: every stage entry, reviews excepted) with ``key``."""
    journal = read_journal(study_dir)
    if seqs is None:
        seqs = [e["seq"] for e in journal.entries if e["stage"] != "review"]
    bad = [s for s in seqs if not 0 <= s < len(journal.entries)]
    if bad:
        raise UsageError(f"`--entry` {bad[0]} is not in the journal of {study_dir} (entries 0..{len(journal.entries) - 1})",
                         hint=f"list them with `lockstep journal {study_dir}`")
    return [(s, sign_entry(study_dir, journal, s, key)) for s in seqs]


def _fingerprint_of(path: Path, entry_sha: str, namespace: str) -> str | None:
    """The key fingerprint of a signature that verifies over the entry's statement, else None."""
    result = _run("ssh-keygen", ["-Y", "check-novalidate", "-n", namespace, "-s", str(path)], stdin=statement(entry_sha))
    match = re.search(rb"key (SHA256:\S+)", result.stdout + result.stderr)
    return match.group(1).decode() if result.returncode == 0 and match else None


def _verifies_as(path: Path, entry_sha: str, namespace: str, allowed: Path, principal: str) -> bool:
    result = _run("ssh-keygen", ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", namespace, "-s", str(path)],
                  stdin=statement(entry_sha))
    return result.returncode == 0


def _principal_of(path: Path, entry_sha: str, namespace: str, allowed: Path) -> str | None:
    found = _run("ssh-keygen", ["-Y", "find-principals", "-s", str(path), "-f", str(allowed)])
    if found.returncode != 0:
        return None
    for line in found.stdout.decode(errors="replace").splitlines():
        for principal in (p.strip() for p in line.split(",")):
            if principal and _verifies_as(path, entry_sha, namespace, allowed, principal):
                return principal
    return None


def check_signatures(study_dir: Path, journal: Journal, allowed: Path | None) -> list[Signature]:
    """Check every file under ``witness/signatures/``.

    Raises ChainBroken when a signature file does not verify over the entry it names, or signs an
    entry that is no longer in the journal (the journal was rewritten after it was signed).
    """
    hashes = _entry_hashes(journal)
    out = []
    for path in _signature_files(study_dir):
        rel = f"{WITNESS}/{SIGNATURES}/{path.name}"
        match = _SIG_NAME.match(path.name)
        if not match or not path.is_file():
            raise ChainBroken(f"{study_dir}/{rel} is not a lockstep signature (expected <entry sha256>.sig)",
                              hint=f"remove it; signatures are written by `lockstep sign {study_dir}`")
        entry_sha = match.group(1)
        seq = hashes.get(entry_sha)
        stage = journal.entries[seq]["stage"] if seq is not None else None
        namespaces = [namespace_of(stage)] if stage else [NAMESPACE, REVIEW_NAMESPACE]
        fingerprint = next((f for ns in namespaces if (f := _fingerprint_of(path, entry_sha, ns))), None)
        if fingerprint is None:
            raise ChainBroken(f"{rel} does not verify over the journal entry it names"
                              + (f" (entry {seq}, {stage})" if seq is not None else "")
                              + ": the signature or the entry was altered", hint="restore the journal and witness/ from git")
        if seq is None:
            raise ChainBroken(f"{rel} is a valid signature (key {fingerprint}) over journal entry sha256 {entry_sha[:12]}, "
                              "which is not in the journal: the journal was rewritten after it was signed",
                              hint="restore JOURNAL.jsonl and JOURNAL.head.json from git")
        principal = _principal_of(path, entry_sha, namespaces[0], allowed) if allowed is not None else None
        if principal is not None:
            note = f"signed by {principal} ({fingerprint})"
        elif allowed is None:
            note = f"signed by key {fingerprint}; no allowed signers to check it against"
        else:
            note = f"signed by key {fingerprint}, which is not an allowed signer (for namespace {namespaces[0]})"
        out.append(Signature(rel, entry_sha, seq, stage, fingerprint, principal, note))
    return out


# ---------------------------------------------------------------- review approvals

@dataclass(frozen=True)
class Approval:
    seq: int
    reviewer: str
    ledger_digest: str
    valid: bool
    note: str


def approvals(study_dir: Path, journal: Journal, allowed: Path | None,
              signatures: list[Signature] | None = None) -> list[Approval]:
    """Every review approval in the journal; ``valid`` only when signed by the reviewer it names, who is an
    allowed signer for ``lockstep-review``."""
    out = []
    reviews = [e for e in journal.entries if e["stage"] == "review" and e.get("details", {}).get("decision") == "approve"]
    if not reviews:
        return out
    if signatures is None:
        signatures = check_signatures(study_dir, journal, allowed)
    root = Path(study_dir)
    for e in reviews:
        reviewer = str(e["details"].get("reviewer", ""))
        mine = [s for s in signatures if s.seq == e["seq"]]
        ok = allowed is not None and any(_verifies_as(root / s.path, s.entry_sha256, REVIEW_NAMESPACE, allowed, reviewer) for s in mine)
        if ok:
            note = f"approval by {reviewer} (entry {e['seq']}) signed by {reviewer}"
        elif not mine:
            note = f"NOT an approval: the approval by {reviewer!r} (entry {e['seq']}) is unsigned"
        elif allowed is None:
            note = f"NOT an approval: the approval by {reviewer!r} (entry {e['seq']}) is signed, but there is no allowed signers file to check it"
        else:
            who = ", ".join(s.principal or f"key {s.fingerprint} (not an allowed signer)" for s in mine)
            note = f"NOT an approval: the approval by {reviewer!r} (entry {e['seq']}) is signed by {who}, not by {reviewer!r} as an allowed reviewer"
        out.append(Approval(e["seq"], reviewer, str(e["details"].get("ledger_digest", "")), ok, note))
    return out


# ---------------------------------------------------------------- RFC 3161 timestamps

def timestamp_query(digest: str) -> bytes:
    """A DER TimeStampReq (``openssl ts -query``) for a sha256 ``digest``, asking for the TSA's certificate."""
    if not _HEX64.match(digest):
        raise ValueError(f"`digest` must be 64 lowercase hex characters, got {digest!r}")
    result = _run("openssl", ["ts", "-query", "-digest", digest, "-sha256", "-cert"])
    if result.returncode != 0 or not result.stdout:
        raise UsageError(f"openssl ts -query failed: {_err(result)}")
    return result.stdout


def request_token(query: bytes, *, tsa_command: str | None = None, tsa_url: str | None = None) -> bytes:
    """Send ``query`` to a TSA and return its DER TimeStampResp: a shell command given the query on stdin
    (its stdout is the reply), or an HTTP POST to ``tsa_url`` (RFC 3161 section 3.4)."""
    if tsa_command:
        try:
            result = subprocess.run(tsa_command, shell=True, input=query, capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UsageError(f"--tsa-command did not answer in 120 s: {tsa_command}") from exc
        if result.returncode != 0 or not result.stdout:
            raise UsageError(f"--tsa-command failed (exit {result.returncode}): {_err(result)}",
                             hint="it is given the TimeStampReq on stdin and must write the DER TimeStampResp to stdout")
        return result.stdout
    request = urllib.request.Request(tsa_url, data=query, headers={"Content-Type": "application/timestamp-query"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"the TSA at {tsa_url} did not answer: {exc}",
                         hint="check the URL, or obtain a token another way and attach it with --token FILE") from exc


@dataclass(frozen=True)
class Stamp:
    """One timestamp token, as read (``trusted``: it verified against the TSA CA)."""

    path: str
    digest: str
    gen_time: str           # UTC, ISO 8601
    tsa: str
    trusted: bool
    note: str


def _token_text(token: Path) -> str:
    result = _run("openssl", ["ts", "-reply", "-token_in", "-in", str(token), "-text"])
    if result.returncode != 0:
        raise ChainBroken(f"{token} is not an RFC 3161 timestamp token ({_err(result)})", hint="restore it from git or attach it again")
    return result.stdout.decode(errors="replace")


def _imprint(text: str) -> str:
    block = text.split("Message data:", 1)[1].split("Serial number:", 1)[0]
    hexes = []
    for line in block.strip().splitlines():
        _, _, rest = line.partition(" - ")
        hexes += rest[:47].replace("-", " ").split()
    return "".join(hexes).lower()


def _gen_time(text: str) -> datetime:
    match = re.search(r"Time stamp: (\w{3}) +(\d{1,2}) (\d\d:\d\d:\d\d)(?:\.\d+)? (\d{4}) GMT", text)
    if not match:
        raise ChainBroken("a timestamp token has no readable time")
    month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].index(match.group(1)) + 1
    h, m, s = (int(x) for x in match.group(3).split(":"))
    return datetime(int(match.group(4)), month, int(match.group(2)), h, m, s, tzinfo=UTC)


def _tsa_name(text: str, token: Path) -> str:
    match = re.search(r"^TSA: (.+)$", text, re.MULTILINE)
    if match and match.group(1).strip() != "unspecified":
        return match.group(1).strip().removeprefix("DirName:")
    certs = _run("openssl", ["pkcs7", "-inform", "DER", "-in", str(token), "-print_certs", "-noout"])
    subject = re.search(r"^subject=(.+)$", certs.stdout.decode(errors="replace"), re.MULTILINE)
    return subject.group(1).strip() if subject else "an unnamed TSA"


def _verify_token(token: Path, digest: str, ca: Path) -> str | None:
    """None when ``token`` verifies for ``digest`` against ``ca``; else openssl's reason."""
    result = _run("openssl", ["ts", "-verify", "-digest", digest, "-token_in", "-in", str(token), "-CAfile", str(ca)])
    return None if result.returncode == 0 and b"Verification: OK" in result.stdout else _err(result)


def attach_token(study_dir: Path, digest: str, reply: bytes, ca: Path | None = None) -> Path:
    """Store a TimeStampResp (or a bare token) for ``digest`` as ``witness/timestamps/<digest>.tst``.

    Refuses a rejected reply, a token over another digest, and (with ``ca``) one that does not verify.
    """
    folder = witness_dir(study_dir) / TIMESTAMPS
    with tempfile.TemporaryDirectory(prefix="lockstep-ts-") as tmp:
        given, token = Path(tmp) / "given", Path(tmp) / "token.tst"
        given.write_bytes(reply)
        as_reply = _run("openssl", ["ts", "-reply", "-in", str(given), "-text"])
        status = re.search(r"Status: (.+)", as_reply.stdout.decode(errors="replace"))
        if as_reply.returncode == 0 and status:
            if not status.group(1).startswith("Granted"):
                why = re.search(r"Status description: (.+)", as_reply.stdout.decode(errors="replace"))
                raise UsageError(f"the TSA refused the request: {status.group(1).strip()} ({why.group(1).strip() if why else 'no reason given'})")
            made = _run("openssl", ["ts", "-reply", "-in", str(given), "-token_out", "-out", str(token)])
        else:
            made = _run("openssl", ["ts", "-reply", "-token_in", "-in", str(given), "-token_out", "-out", str(token)])
        if made.returncode != 0 or not token.is_file():
            raise UsageError("the file given is neither an RFC 3161 TimeStampResp nor a token (DER)",
                             hint="pass the .tsr a TSA answered (e.g. `openssl ts -reply` or curl to a TSA)")
        text = _token_text(token)
        if _imprint(text) != digest:
            raise UsageError(f"the token stamps sha256 {_imprint(text)[:12]}, not {digest[:12]}",
                             hint="request a token for this digest (`lockstep timestamp STUDY --query-out FILE`)")
        if ca is not None and (why := _verify_token(token, digest, ca)) is not None:
            raise UsageError(f"the token does not verify against {ca}: {why}", hint="pass the CA certificate of the TSA that issued it")
        data = token.read_bytes()
    path = folder / f"{digest}.tst"
    if path.exists() and path.read_bytes() != data:
        raise UsageError(f"{path} already holds a token for this digest", hint="keep it, or remove it first to replace it")
    atomic_write(path, data)
    return path


def check_timestamps(study_dir: Path, known: dict[str, str], ca: Path | None) -> list[Stamp]:
    """Check every ``witness/timestamps/*.tst``; ``known`` maps each digest that may be stamped to what it is.

    Raises ChainBroken when a token's imprint is not the digest its name says, or it stamps a digest that
    is neither a lock nor a journal entry (the journal or the lock was rewritten after it was stamped).
    """
    folder = witness_dir(study_dir) / TIMESTAMPS
    out = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        rel = f"{WITNESS}/{TIMESTAMPS}/{path.name}"
        match = _TST_NAME.match(path.name)
        if not match or not path.is_file():
            raise ChainBroken(f"{study_dir}/{rel} is not a lockstep timestamp (expected <digest>.tst)",
                              hint=f"remove it; tokens are attached by `lockstep timestamp {study_dir}`")
        digest = match.group(1)
        text = _token_text(path)
        if _imprint(text) != digest:
            raise ChainBroken(f"{rel} stamps sha256 {_imprint(text)[:12]}, not the digest its name says", hint="restore witness/ from git")
        if digest not in known:
            raise ChainBroken(f"{rel} stamps {digest[:12]}, which is neither a lock of this study nor a journal entry: "
                              "the lock or the journal was rewritten after it was stamped", hint="restore them from git")
        when = _gen_time(text).strftime("%Y-%m-%dT%H:%M:%SZ")
        tsa = _tsa_name(text, path)
        if ca is None:
            trusted, note = False, f"{known[digest]} stamped at {when} by {tsa}, NOT CHECKED (no TSA CA: pass --tsa-ca)"
        elif (why := _verify_token(path, digest, ca)) is not None:
            raise ChainBroken(f"{rel} does not verify against {ca}: {why}", hint="pass the CA of the TSA that issued it, or restore the token")
        else:
            trusted, note = True, f"{known[digest]} timestamped at {when} by TSA {tsa}"
        out.append(Stamp(rel, digest, when, tsa, trusted, note))
    return out


# ---------------------------------------------------------------- the freeze in git

def lock_paths(study_dir: Path) -> list[Path]:
    """The lock files whose commit witnesses the freeze: the base lock, SHA256SUMS and every amendment lock."""
    study_dir = Path(study_dir)
    return [study_dir / LOCK, study_dir / SUMS] + [d / AMENDMENT_LOCK for d in amendment_dirs(study_dir) if (d / AMENDMENT_LOCK).is_file()]


def uncommitted_lock_files(study_dir: Path, root: Path | None) -> list[str]:
    """Lock files that are untracked or differ from HEAD (repository-relative); [] outside git."""
    if root is None:
        return []
    return dirty_files(Path(root), lock_paths(study_dir))


def require_committed_lock(study_dir: Path, root: Path | None, *, allow: bool) -> list[str]:
    """Refuse (StageRefused) while the lock is not committed; with ``allow``, return the files, which the
    caller records as a deviation."""
    files = uncommitted_lock_files(study_dir, root)
    if files and not allow:
        listed = " ".join(files)
        raise StageRefused("the freeze is not committed, so no commit witnesses that the plan was locked before capture:\n"
                           + "\n".join(f"  - {f} is untracked or differs from HEAD" for f in files),
                           hint=f"commit them (git add {listed} && git commit -m 'Freeze {Path(study_dir).name}'), "
                                "or pass --allow-uncommitted-lock, which records a deviation")
    return files


def lock_commit(study_dir: Path, root: Path) -> str | None:
    """The oldest commit that holds the lock and SHA256SUMS byte for byte as they are now, or None."""
    study_dir = Path(study_dir)
    rel = study_dir.resolve().relative_to(Path(root).resolve())
    lock_rel, sums_rel = (rel / LOCK).as_posix(), (rel / SUMS).as_posix()
    want_lock, want_sums = (study_dir / LOCK).read_bytes(), (study_dir / SUMS).read_bytes()
    try:
        log = _git(Path(root), "log", "--format=%H", "--reverse", "--", lock_rel)
    except GitError:
        return None
    for commit in log.split():
        lock = _git(Path(root), "show", f"{commit}:{lock_rel}", check=False, binary=True)
        sums = _git(Path(root), "show", f"{commit}:{sums_rel}", check=False, binary=True)
        if lock.returncode == 0 and sums.returncode == 0 and lock.stdout == want_lock and sums.stdout == want_sums:
            return commit
    return None


def lock_commit_note(study_dir: Path, root: Path | None, journal: Journal) -> tuple[str | None, bool | None, str]:
    """(lock commit, whether it precedes the first capture's commit, a sentence saying so)."""
    if root is None:
        return None, None, "no git repository here; the lock's commit not checked (verify inside the study's repository)"
    commit = lock_commit(study_dir, root)
    captures = journal.stages("capture")
    if commit is None:
        return None, False, "no commit holds prereg.lock.json and SHA256SUMS as they are: the freeze is not witnessed by git"
    when = _git(Path(root), "show", "-s", "--format=%cI", commit).strip()
    said = f"lock committed in {commit[:12]} (committer date {when}, self-attested)"
    if not captures:
        return commit, None, said + "; no capture yet"
    first = captures[0]["git"]["commit"]
    if first is None:
        return commit, False, said + f"; the first capture (entry {captures[0]['seq']}) recorded no commit"
    if is_ancestor(Path(root), commit, first):
        how = "is the commit the first capture ran at" if first == commit else f"precedes the first capture's commit {first[:12]}"
        return commit, True, said + f", which {how} (entry {captures[0]['seq']})"
    return commit, False, said + f", which does NOT precede the first capture's commit {first[:12]} (entry {captures[0]['seq']}): the lock was committed after capture"


def uncommitted_lock_deviations(journal: Journal) -> list[dict]:
    """Ledger deviations: every capture that ran with --allow-uncommitted-lock."""
    return [{"kind": "uncommitted_lock",
             "detail": f"capture (journal entry {e['seq']}) ran before the lock was committed: {', '.join(e['details']['uncommitted_lock'])}"}
            for e in journal.stages("capture") if e.get("details", {}).get("uncommitted_lock")]


# ---------------------------------------------------------------- the evidence level

def _parse_utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass
class Evidence:
    """How strong the ordering evidence is, and what it rests on."""

    level: str
    signed: dict[str, list[str]] = field(default_factory=dict)     # "seq stage" -> principals
    unsigned: list[str] = field(default_factory=list)              # "seq stage" with no allowed signature
    timestamps: list[dict] = field(default_factory=list)
    lock_commit: str | None = None
    lock_commit_precedes_capture: bool | None = None
    approvals: list[dict] = field(default_factory=list)
    allowed_signers: str = ""
    tsa_ca: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.level} ({self.detail()})"

    def detail(self) -> str:
        """What the level rests on: who signed which entry, each timestamp, the lock's commit."""
        parts = []  # entries are "#SEQ STAGE": journal entry numbers, never counts
        if self.signed:
            parts.append("signed journal entries: " + ", ".join(f"#{k} by {'/'.join(v)}" for k, v in self.signed.items()))
        if self.unsigned:
            parts.append("unsigned journal entries: " + ", ".join(f"#{k}" for k in self.unsigned))
        parts += [t["note"] for t in self.timestamps]
        parts += self.notes
        return "; ".join(parts) if parts else "hash chain only"

    def to_dict(self) -> dict:
        return asdict(self) | {"detail": self.detail()}


def assess(study_dir: Path, journal: Journal, lock: dict, amendments: list[dict], root: Path | None, *,
           allowed_signers: Path | None = None, tsa_ca: Path | None = None,
           until_seq: int | None = None) -> Evidence:
    """The ordering evidence of a verified study (ChainBroken on a broken or orphaned witness).

    ``until_seq``: judge only entries before it (the audit judges the entries before its own).
    """
    allowed, allowed_src = trust_file(study_dir, root, ALLOWED_SIGNERS, allowed_signers)
    ca, ca_src = trust_file(study_dir, root, TSA_CA, tsa_ca)
    signatures = check_signatures(study_dir, journal, allowed)
    entries = journal.entries if until_seq is None else journal.entries[:until_seq]
    evidence = Evidence(level=LEVELS[0], allowed_signers=allowed_src, tsa_ca=ca_src)
    for e in entries:
        if e["stage"] not in ORDER_STAGES:
            continue
        who = sorted({s.principal for s in signatures if s.seq == e["seq"] and s.counts})
        key = f"{e['seq']} {e['stage']}"
        if who:
            evidence.signed[key] = who
        else:
            evidence.unsigned.append(key)
    hashes = _entry_hashes(journal)
    known = {lock["lock_digest"]: "lock"} | {a["lock_digest"]: f"amendment {a['amendment']['id']} lock" for a in amendments}
    known |= {h: f"journal entry {seq} ({journal.entries[seq]['stage']})" for h, seq in hashes.items()}
    captures = [e for e in entries if e["stage"] == "capture"]
    lock_stamped_in_time = False
    for stamp in check_timestamps(study_dir, known, ca):
        item = asdict(stamp)
        if stamp.digest == lock["lock_digest"] and stamp.trusted:
            if captures:
                first = _parse_utc(captures[0]["started_utc"])
                before = datetime.strptime(stamp.gen_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= first
                item["note"] = stamp.note + (f", before the first capture entry ({captures[0]['started_utc']}, entry {captures[0]['seq']})" if before
                                             else f", AFTER the first capture entry ({captures[0]['started_utc']}, entry {captures[0]['seq']}): it does not show the plan was locked before capture")
                lock_stamped_in_time = before
            else:
                item["note"] = stamp.note + "; no capture yet"
                lock_stamped_in_time = True
        evidence.timestamps.append(item)
    commit, precedes, said = lock_commit_note(study_dir, root, journal)
    evidence.lock_commit, evidence.lock_commit_precedes_capture = commit, precedes
    evidence.notes.append(said)
    evidence.approvals = [asdict(a) for a in approvals(study_dir, journal, allowed, signatures)]
    if lock_stamped_in_time:
        evidence.level = "timestamped"
    elif evidence.signed and not evidence.unsigned:
        evidence.level = "signed"
    if any(s.seq is not None and not s.counts for s in signatures):
        evidence.notes += [f"{s.path}: {s.note}" for s in signatures if s.seq is not None and not s.counts]
    return evidence


def approved_ledger_digests(study_dir: Path, journal: Journal, root: Path | None, allowed_signers: Path | None = None) -> set[str]:
    """The ledger content digests approved by a valid, signed review (what the ledger may show as approved)."""
    if not any(e["stage"] == "review" for e in journal.entries):
        return set()
    allowed, _ = trust_file(study_dir, root, ALLOWED_SIGNERS, allowed_signers)
    return {a.ledger_digest for a in approvals(study_dir, journal, allowed) if a.valid}


# ---------------------------------------------------------------- the --sign-key option of every stage command

def signs_new_entries(command):
    """Decorate a click command whose first argument is ``study_dir``: add ``--sign-key`` (env
    LOCKSTEP_SIGNING_KEY) and sign the journal entries the command appended."""
    import click

    @click.option("--sign-key", type=click.Path(path_type=Path), default=None,
                  help=f"SSH private key that signs the journal entry this command writes (or set {SIGN_KEY_ENV}).")
    @functools.wraps(command)
    def wrapper(*args, sign_key: Path | None = None, **kwargs):
        key = sign_key or (Path(os.environ[SIGN_KEY_ENV]) if os.environ.get(SIGN_KEY_ENV) else None)
        study_dir = Path(kwargs["study_dir"])
        if key is not None:
            key_fingerprint(key)  # a bad key is refused before the stage runs
        before = _length(study_dir)
        result = command(*args, **kwargs)
        journal = _journal_or_none(study_dir)
        new = [e for e in (journal.entries if journal else [])[before:]]
        for e in new:
            if key is not None:
                path = sign_entry(study_dir, journal, e["seq"], key)
                click.echo(f"signed journal entry {e['seq']} ({e['stage']}): {path}")
            elif e["stage"] == "review":
                click.echo(f"warning: the approval (journal entry {e['seq']}) is unsigned, so it is not an approval; sign it: "
                           f"`lockstep sign {study_dir} --entry {e['seq']} --sign-key KEY`", err=True)
        return result

    return wrapper


def _journal_or_none(study_dir: Path) -> Journal | None:
    try:
        return read_journal(study_dir) if study_dir.is_dir() else None
    except (ChainBroken, LockMismatch):
        return None


def _length(study_dir: Path) -> int:
    journal = _journal_or_none(study_dir)
    return len(journal.entries) if journal else 0
