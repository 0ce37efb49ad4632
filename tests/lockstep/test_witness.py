"""Witnesses of order from outside the folder (lockstep.witness): SSH signatures checked against an
allowed-signers list, RFC 3161 timestamps from a real `openssl ts` TSA, and the lock's commit in git.

Everything runs real tools: keys from `ssh-keygen -t ed25519`, a CA and a TSA certificate (extendedKeyUsage
critical timeStamping) from `openssl req`/`x509`, replies from `openssl ts -reply`. Independent references:
`ssh-keygen -Y verify` and `openssl ts -verify` called here directly, and `git merge-base --is-ancestor`.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from audit.chain import verify_approvals, verify_evidence
from lockstep import witness
from lockstep.errors import StageRefused, UsageError
from lockstep.fsio import canonical_json, pretty_json, sha256_bytes
from lockstep.journal import append_entry, read_journal
from lockstep.lock import current_lock_digest
from lockstep.verify import STEPS as FREEZE_STEPS
from lockstep.verify import exit_code_of, make_context, run_steps
from studyrepo import commit_all, git

LOCKSTEP = [sys.executable, "-m", "lockstep"]


def run(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LOCKSTEP, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, check=False)


# ---------------------------------------------------------------- keys and a TSA

@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """ed25519 keys of alice (researcher), rev (reviewer) and mallory (in no allowed-signers list)."""
    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("alice", "rev", "mallory"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)], check=True)
        out[name] = folder / name
    return out


def allowed_line(keys, name: str, options: str = "") -> str:
    keytype, blob = (keys[name].with_suffix(".pub").read_text().split()[:2])
    return f"{name} {options + ' ' if options else ''}{keytype} {blob}\n"


def write_allowed(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_tsa(folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", f"/CN={name} Root CA", "-days", "30",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", f"/O=Lockstep Tests/CN={name}", cwd=folder)
    (folder / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                    "extendedKeyUsage=critical,timeStamping\n")
    _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tsa.pem",
             "-days", "30", "-extfile", "ext.cnf", cwd=folder)
    (folder / "serial").write_text("01\n")
    (folder / "tsa.cnf").write_text(
        "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\nserial = ./serial\ncrypto_device = builtin\n"
        "signer_digest = sha256\ndefault_policy = 1.2.3.4.1\ndigests = sha256\naccuracy = secs:1\n"
        "ordering = yes\ntsa_name = yes\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n")
    command = f"cd {folder} && openssl ts -reply -config tsa.cnf -queryfile /dev/stdin -signer tsa.pem -inkey tsa.key 2>/dev/null"
    return {"dir": folder, "ca": folder / "ca.pem", "command": command}


@pytest.fixture(scope="module")
def tsa(tmp_path_factory) -> dict[str, Path]:
    return _make_tsa(tmp_path_factory.mktemp("tsa") / "good", "Test TSA")


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory) -> dict[str, Path]:
    return _make_tsa(tmp_path_factory.mktemp("tsa") / "other", "Other TSA")


def reply_for(tsa, digest: str, tmp: Path) -> Path:
    """A real TSA reply (`openssl ts -query` then `openssl ts -reply`) for ``digest``."""
    query, reply = tmp / f"{digest[:8]}.tsq", tmp / f"{digest[:8]}.tsr"
    subprocess.run(["openssl", "ts", "-query", "-digest", digest, "-sha256", "-cert", "-out", str(query)], check=True, capture_output=True)
    subprocess.run(["openssl", "ts", "-reply", "-config", "tsa.cnf", "-queryfile", str(query), "-signer", "tsa.pem",
                    "-inkey", "tsa.key", "-out", str(reply)], cwd=tsa["dir"], check=True, capture_output=True)
    return reply


# ---------------------------------------------------------------- helpers on a study

def append_capture(study: Path) -> dict:
    return append_entry(study, "capture", inputs={}, outputs={}, access_level="nothing_run",
                        lock_digest=current_lock_digest(study), details={"runs": []})


def append_review(study: Path, reviewer: str, ledger_digest: str = "a" * 64) -> dict:
    return append_entry(study, "review", inputs={}, outputs={}, access_level="scores_seen", lock_digest=current_lock_digest(study),
                        details={"decision": "approve", "reviewer": reviewer, "note": "", "ledger_digest": ledger_digest})


def witness_results(study: Path, **trust):
    """The freeze steps and the two witness steps (the stage-artifact steps need captured runs)."""
    return run_steps(make_context(study, **trust), list(FREEZE_STEPS) + [verify_approvals, verify_evidence])


def evidence_of(study: Path, **trust) -> witness.Evidence:
    ctx = make_context(study, **trust)
    assert all(r.ok for r in run_steps(ctx, list(FREEZE_STEPS))), "the freeze must verify first"
    return witness.assess(study, ctx.journal, ctx.lock, ctx.amendments, ctx.root,
                          allowed_signers=trust.get("allowed_signers"), tsa_ca=trust.get("tsa_ca"))


def rechain(study: Path, edit) -> None:
    """What a forger with write access does: edit entries, recompute every prev_sha256 and the head."""
    path = study / "JOURNAL.jsonl"
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    edit(entries)
    lines, prev = [], None
    for seq, entry in enumerate(entries):
        entry["seq"], entry["prev_sha256"] = seq, prev
        lines.append(canonical_json(entry))
        prev = sha256_bytes(lines[-1])
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    (study / "JOURNAL.head.json").write_bytes(pretty_json({"length": len(lines), "last_sha256": prev}))


# ---------------------------------------------------------------- signatures

def test_a_hash_chain_alone_is_reported_as_self_attested(frozen_demo):
    result = run("verify", frozen_demo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "verify: intact; ordering evidence: self-attested"
    assert "(unsigned journal entries: #0 prereg;" in result.stdout  # entry numbers, not counts
    head = git(frozen_demo.parent.parent, "log", "-1", "--format=%H", "--", "preregistrations/demo/prereg.lock.json").strip()
    assert f"lock committed in {head[:12]}" in result.stdout and "no capture yet" in result.stdout


def test_prereg_with_sign_key_writes_a_signature_ssh_keygen_verifies(demo_study, keys, tmp_path):
    result = run("prereg", demo_study, "--sign-key", keys["alice"])
    assert result.returncode == 0, result.stderr
    line = (demo_study / "JOURNAL.jsonl").read_bytes().splitlines()[0]
    sig = demo_study / "witness" / "signatures" / f"{sha256_bytes(line)}.sig"
    assert sig.is_file() and str(sig.relative_to(demo_study)) in result.stdout
    # independent check: ssh-keygen itself, over the statement the module documents
    allowed = write_allowed(tmp_path / "allowed", allowed_line(keys, "alice"))
    check = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "alice", "-n", "lockstep", "-s", str(sig)],
                           input=f"lockstep journal entry sha256:{sha256_bytes(line)}\n".encode(), capture_output=True, check=False)
    assert check.returncode == 0, check.stderr
    # the hash chain's format did not change: the entry has no signature field and the chain verifies
    assert "signature" not in json.loads(line) and read_journal(demo_study).entries[0]["stage"] == "prereg"


def test_every_stage_signed_by_an_allowed_signer_is_level_signed_and_names_the_signer(frozen_demo, keys, tmp_path):
    allowed = write_allowed(tmp_path / "allowed", allowed_line(keys, "alice"))
    append_capture(frozen_demo)
    witness.sign_entries(frozen_demo, keys["alice"], [0])
    partly = evidence_of(frozen_demo, allowed_signers=allowed)
    assert partly.level == "self-attested" and partly.signed == {"0 prereg": ["alice"]} and partly.unsigned == ["1 capture"]
    assert partly.detail().startswith("signed journal entries: #0 prereg by alice; unsigned journal entries: #1 capture;")
    result = run("sign", frozen_demo, "--sign-key", keys["alice"])
    assert result.returncode == 0, result.stderr
    again = run("sign", frozen_demo, "--sign-key", keys["alice"])  # idempotent: no second file for the same key
    assert len(list((frozen_demo / "witness" / "signatures").iterdir())) == 2, again.stdout
    full = evidence_of(frozen_demo, allowed_signers=allowed)
    assert full.level == "signed" and full.signed == {"0 prereg": ["alice"], "1 capture": ["alice"]} and full.unsigned == []
    # the same signatures, checked against a list that does not hold alice's key, count for nothing
    strangers = write_allowed(tmp_path / "strangers", allowed_line(keys, "mallory"))
    weaker = evidence_of(frozen_demo, allowed_signers=strangers)
    assert weaker.level == "self-attested" and weaker.unsigned == ["0 prereg", "1 capture"]
    assert "not an allowed signer" in weaker.detail()


def test_the_allowed_signers_default_is_the_study_witness_folder_then_the_repository(frozen_demo, keys):
    witness.sign_entries(frozen_demo, keys["alice"])
    assert evidence_of(frozen_demo).level == "self-attested"  # no list anywhere: nothing to check against
    repo_list = write_allowed(frozen_demo.parent.parent / ".lockstep" / "allowed_signers", allowed_line(keys, "alice"))
    found = evidence_of(frozen_demo)
    assert found.level == "signed" and str(repo_list) in found.allowed_signers
    study_list = write_allowed(frozen_demo / "witness" / "allowed_signers", allowed_line(keys, "mallory"))
    assert evidence_of(frozen_demo).level == "self-attested" and str(study_list) in evidence_of(frozen_demo).allowed_signers


def test_a_rechained_journal_after_editing_an_entry_is_not_intact_at_level_signed(frozen_demo, keys, tmp_path):
    allowed = write_allowed(tmp_path / "allowed", allowed_line(keys, "alice"))
    append_capture(frozen_demo)
    append_entry(frozen_demo, "audit", inputs={}, outputs={}, access_level="scores_seen", lock_digest=current_lock_digest(frozen_demo))
    witness.sign_entries(frozen_demo, keys["alice"])
    assert evidence_of(frozen_demo, allowed_signers=allowed).level == "signed"

    def lower_the_audit(entries):  # hide that scores were seen
        entries[2]["access_level"] = "labels_frozen"

    rechain(frozen_demo, lower_the_audit)
    results = witness_results(frozen_demo, allowed_signers=allowed)
    assert exit_code_of(results) == 1
    failed = next(r for r in results if not r.ok)
    assert failed.name == "verify_evidence" and "the journal was rewritten after it was signed" in failed.message
    # the forger also removes the old signatures and re-signs with a key of their own: weaker evidence, named
    for sig in (frozen_demo / "witness" / "signatures").iterdir():
        sig.unlink()
    witness.sign_entries(frozen_demo, keys["mallory"])
    results = witness_results(frozen_demo, allowed_signers=allowed)
    assert exit_code_of(results) == 0
    assert results[-1].message.startswith("ordering evidence: self-attested (unsigned journal entries: #0 prereg, #1 capture, #2 audit")


def test_a_signature_moved_onto_another_entry_or_altered_is_broken(frozen_demo, keys, tmp_path):
    allowed = write_allowed(tmp_path / "allowed", allowed_line(keys, "alice"))
    append_capture(frozen_demo)
    [(_, sig)] = witness.sign_entries(frozen_demo, keys["alice"], [0])
    capture_sha = sha256_bytes(read_journal(frozen_demo).lines[1])
    moved = sig.with_name(f"{capture_sha}.sig")
    moved.write_bytes(sig.read_bytes())
    results = witness_results(frozen_demo, allowed_signers=allowed)
    failed = next(r for r in results if not r.ok)
    assert exit_code_of(results) == 1 and "does not verify over the journal entry it names (entry 1, capture)" in failed.message


# ---------------------------------------------------------------- review approvals

def test_only_a_signed_approval_by_the_named_allowed_reviewer_is_an_approval(frozen_demo, keys, tmp_path):
    allowed = write_allowed(tmp_path / "allowed", allowed_line(keys, "alice", 'namespaces="lockstep"') + allowed_line(keys, "rev"))
    unsigned = append_review(frozen_demo, "rev", "1" * 64)
    by_stranger = append_review(frozen_demo, "rev", "2" * 64)
    by_researcher = append_review(frozen_demo, "alice", "3" * 64)   # alice may sign stages, not approvals
    claims_other = append_review(frozen_demo, "rev", "4" * 64)      # alice signs an approval that names rev
    good = append_review(frozen_demo, "rev", "5" * 64)
    witness.sign_entries(frozen_demo, keys["mallory"], [by_stranger["seq"]])
    witness.sign_entries(frozen_demo, keys["alice"], [by_researcher["seq"], claims_other["seq"]])
    witness.sign_entries(frozen_demo, keys["rev"], [good["seq"]])
    journal = read_journal(frozen_demo)
    found = {a.seq: a for a in witness.approvals(frozen_demo, journal, allowed)}
    assert [s for s, a in found.items() if a.valid] == [good["seq"]]
    assert "is unsigned" in found[unsigned["seq"]].note
    assert "not an allowed signer" in found[by_stranger["seq"]].note
    assert "NOT an approval" in found[by_researcher["seq"]].note and "NOT an approval" in found[claims_other["seq"]].note
    assert witness.approved_ledger_digests(frozen_demo, journal, None, allowed) == {"5" * 64}
    # verify says so, entry by entry
    message = next(r for r in witness_results(frozen_demo, allowed_signers=allowed) if r.name == "verify_approvals").message
    assert message.count("NOT an approval") == 4 and f"approval by rev (entry {good['seq']}) signed by rev" in message


# ---------------------------------------------------------------- RFC 3161 timestamps

def test_a_tsa_token_over_the_lock_verifies_and_makes_the_level_timestamped(frozen_demo, tsa, tmp_path):
    lock_digest = current_lock_digest(frozen_demo)
    query = tmp_path / "lock.tsq"
    assert run("timestamp", frozen_demo, "--query-out", query).returncode == 0
    reply = tmp_path / "lock.tsr"
    subprocess.run(["openssl", "ts", "-reply", "-config", "tsa.cnf", "-queryfile", str(query), "-signer", "tsa.pem",
                    "-inkey", "tsa.key", "-out", str(reply)], cwd=tsa["dir"], check=True, capture_output=True)
    attached = run("timestamp", frozen_demo, "--token", reply, "--tsa-ca", tsa["ca"])
    assert attached.returncode == 0, attached.stderr
    token = frozen_demo / "witness" / "timestamps" / f"{lock_digest}.tst"
    # independent check: openssl itself verifies the stored token for the lock digest
    check = subprocess.run(["openssl", "ts", "-verify", "-digest", lock_digest, "-token_in", "-in", str(token),
                            "-CAfile", str(tsa["ca"])], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "Verification: OK" in check.stdout
    append_capture(frozen_demo)
    evidence = evidence_of(frozen_demo, tsa_ca=tsa["ca"])
    assert evidence.level == "timestamped"
    [stamp] = evidence.timestamps
    assert "lock timestamped at" in stamp["note"] and "by TSA /O=Lockstep Tests/CN=Test TSA, before the first capture entry" in stamp["note"]
    # without the TSA's CA the token is reported and not counted
    unchecked = evidence_of(frozen_demo)
    assert unchecked.level == "self-attested" and "NOT CHECKED" in unchecked.timestamps[0]["note"]


def test_a_stamp_after_the_first_capture_does_not_count(frozen_demo, tsa):
    append_capture(frozen_demo)
    # the capture entry records a time long before any stamp can be made
    rechain(frozen_demo, lambda entries: entries[1].update(started_utc="2020-01-01T00:00:00.000000Z"))
    result = run("timestamp", frozen_demo, "--tsa-command", tsa["command"], "--tsa-ca", tsa["ca"])
    assert result.returncode == 0, result.stderr
    evidence = evidence_of(frozen_demo, tsa_ca=tsa["ca"])
    assert evidence.level == "self-attested" and "AFTER the first capture entry" in evidence.timestamps[0]["note"]


def test_a_token_for_another_digest_or_from_another_tsa_fails(frozen_demo, tsa, other_tsa, tmp_path):
    lock_digest = current_lock_digest(frozen_demo)
    other = reply_for(tsa, "0" * 64, tmp_path)
    refused = run("timestamp", frozen_demo, "--token", other)
    assert refused.returncode == 2 and "the token stamps sha256 000000000000, not" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(UsageError, match="not "):
        witness.attach_token(frozen_demo, lock_digest, other.read_bytes())
    # planted under the lock's name by hand: verify catches it
    folder = frozen_demo / "witness" / "timestamps"
    folder.mkdir(parents=True)
    subprocess.run(["openssl", "ts", "-reply", "-in", str(other), "-token_out", "-out", str(folder / f"{lock_digest}.tst")], check=True, capture_output=True)
    results = witness_results(frozen_demo, tsa_ca=tsa["ca"])
    assert exit_code_of(results) == 1 and "not the digest its name says" in next(r for r in results if not r.ok).message
    # a genuine token for the lock from a TSA the reviewer does not trust
    (folder / f"{lock_digest}.tst").unlink()
    witness.attach_token(frozen_demo, lock_digest, reply_for(other_tsa, lock_digest, tmp_path).read_bytes())
    results = witness_results(frozen_demo, tsa_ca=tsa["ca"])
    assert exit_code_of(results) == 1 and "does not verify against" in next(r for r in results if not r.ok).message
    assert exit_code_of(witness_results(frozen_demo, tsa_ca=other_tsa["ca"])) == 0


def test_tsa_url_posts_the_query_to_an_rfc3161_server(frozen_demo, tsa):
    class TSA(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            assert self.headers["Content-Type"] == "application/timestamp-query"
            query = self.rfile.read(int(self.headers["Content-Length"]))
            reply = subprocess.run(tsa["command"], shell=True, input=query, capture_output=True, check=True).stdout
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), TSA)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run("timestamp", frozen_demo, "--tsa-url", f"http://127.0.0.1:{server.server_port}/tsr", "--tsa-ca", tsa["ca"])
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert evidence_of(frozen_demo, tsa_ca=tsa["ca"]).level == "timestamped"


# ---------------------------------------------------------------- the freeze in git

def test_capture_refuses_while_the_lock_is_uncommitted(demo_study):
    from lockstep.freeze import freeze

    freeze(demo_study)
    result = run("capture", demo_study, "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the freeze is not committed" in result.stderr and "prereg.lock.json is untracked" in result.stderr
    assert "--allow-uncommitted-lock" in result.stderr and "git add" in result.stderr
    assert [e["stage"] for e in read_journal(demo_study).entries] == ["prereg"]
    root = demo_study.parent.parent
    assert witness.require_committed_lock(demo_study, root, allow=True) == ["preregistrations/demo/SHA256SUMS", "preregistrations/demo/prereg.lock.json"]
    commit_all(root, "freeze")
    assert witness.require_committed_lock(demo_study, root, allow=False) == []


def test_verify_names_a_lock_committed_after_the_first_capture(demo_study):
    from lockstep.freeze import freeze

    root = demo_study.parent.parent
    freeze(demo_study)
    entry = append_entry(demo_study, "capture", inputs={}, outputs={}, access_level="nothing_run",
                         lock_digest=current_lock_digest(demo_study), details={"runs": [], "uncommitted_lock": ["preregistrations/demo/prereg.lock.json"]})
    with pytest.raises(StageRefused):
        witness.require_committed_lock(demo_study, root, allow=False)
    lock_commit = commit_all(root, "freeze, after the capture")
    assert subprocess.run(["git", "merge-base", "--is-ancestor", lock_commit, entry["git"]["commit"]], cwd=root, check=False).returncode == 1
    evidence = evidence_of(demo_study)
    assert evidence.lock_commit == lock_commit and evidence.lock_commit_precedes_capture is False
    assert "does NOT precede the first capture's commit" in evidence.detail()
    assert witness.uncommitted_lock_deviations(read_journal(demo_study)) == [
        {"kind": "uncommitted_lock", "detail": "capture (journal entry 1) ran before the lock was committed: preregistrations/demo/prereg.lock.json"}]


def test_a_lock_committed_before_capture_precedes_it(frozen_demo):
    entry = append_capture(frozen_demo)
    evidence = evidence_of(frozen_demo)
    root = frozen_demo.parent.parent
    assert evidence.lock_commit_precedes_capture is True
    assert subprocess.run(["git", "merge-base", "--is-ancestor", evidence.lock_commit, entry["git"]["commit"]], cwd=root, check=False).returncode == 0


def test_a_bad_signing_key_is_refused_before_the_stage_runs(demo_study, tmp_path):
    (tmp_path / "notakey").write_text("hello\n")
    result = run("prereg", demo_study, "--sign-key", tmp_path / "notakey")
    assert result.returncode == 2 and "is not an SSH key" in result.stderr and "Traceback" not in result.stderr
    assert not (demo_study / "prereg.lock.json").exists()
