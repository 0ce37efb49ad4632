"""Fuzz the loading of a study: N study folders mutated from ``preregistrations/demo``, each run through
``lockstep validate``, ``prereg`` and (when the freeze succeeds) ``verify``; counts of tracebacks, hangs
and unclear messages.

    .venv/bin/python tools/fuzz_studies.py --n 300 --seed 0

Each folder is a copy of the demo in its own git repository (committed), with one seeded mutation: a
random byte-level edit (flips, truncation, insertion, deleted or swapped lines) or one of the hostile
shapes issue 11 found (integers of thousands of digits, deep YAML flow/block and JSON nesting, a YAML
alias bomb, non-finite numbers, huge strings, symlinked plan files, oversized, empty, non-UTF-8 or
missing files, bad tags, duplicate keys, wrong types). Every command runs in a forked child under a
memory cap (``RLIMIT_AS``) and a timeout, so that a hang or a bomb is counted, not suffered.

A case fails when any command: raises (a traceback, or click's bare "Aborted!"), runs past the timeout
(a hang), exits non-zero without one ``error: ...`` message, prints a line longer than ``MAX_LINE``
characters, exits 0 on a mutation that is certainly invalid, or leaves a lock behind a refused freeze.
``tests/lockstep/test_fuzz_studies.py`` runs this at CI size; ``bench/RESULTS.md`` records a large run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "preregistrations" / "demo"
PLAN_FILES = ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml")
YAML_FILES = ("study.yaml", "rubric.yaml", "thresholds.yaml")
MAX_LINE = 2_000            # no line of a message may be longer (the issue saw 148,000 characters)
MEMORY_CAP = 3 << 30        # bytes of address space a command may use before it is counted as a failure
TRACEBACK_EXIT = 99         # the child's exit code when a command raised


# ---------------------------------------------------------------- mutations
# Each takes (rng, study folder) and returns (description, certainly_invalid).

def _pick(rng, names=PLAN_FILES) -> str:
    return rng.choice(list(names))


def _writable(path: Path) -> None:
    if path.exists() and not path.is_symlink():
        path.chmod(0o644)


def _rewrite(path: Path, data: bytes) -> None:
    _writable(path)
    path.write_bytes(data)


def m_flip_bytes(rng, study):
    name = _pick(rng)
    data = bytearray((study / name).read_bytes())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    _rewrite(study / name, bytes(data))
    return f"flip bytes of {name}", False


def m_random_bytes(rng, study):
    name = _pick(rng)
    data = bytearray((study / name).read_bytes())
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    _rewrite(study / name, bytes(data))
    return f"random bytes in {name}", False


def m_truncate(rng, study):
    name = _pick(rng)
    data = (study / name).read_bytes()
    _rewrite(study / name, data[: rng.randrange(len(data))])
    return f"truncate {name}", False


def m_insert(rng, study):
    name = _pick(rng)
    data = (study / name).read_bytes()
    at = rng.randrange(len(data))
    junk = rng.choice([b"{", b"[", b"}", b"]", b":", b"- ", b"\n  ", b"&a ", b"*a", b"!!", b"\x00", b"\xff\xfe", b'"', b"'", b"#", b"\t", b"%YAML 1.1\n", b"---\n", b"..."])
    _rewrite(study / name, data[:at] + junk * rng.randint(1, 50) + data[at:])
    return f"insert {junk!r} into {name}", False


def m_delete_line(rng, study):
    name = _pick(rng)
    lines = (study / name).read_bytes().splitlines(keepends=True)
    del lines[rng.randrange(len(lines))]
    _rewrite(study / name, b"".join(lines))
    return f"delete a line of {name}", False


def m_swap_lines(rng, study):
    name = _pick(rng)
    lines = (study / name).read_bytes().splitlines(keepends=True)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    _rewrite(study / name, b"".join(lines))
    return f"swap lines of {name}", False


def m_duplicate_chunk(rng, study):
    name = _pick(rng)
    data = (study / name).read_bytes()
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 400))
    _rewrite(study / name, data[:b] + data[a:b] * rng.randint(1, 20) + data[b:])
    return f"duplicate a chunk of {name}", False


_NUMBER = re.compile(rb"(?<=: )-?\d+(\.\d+)?(?=[ \t]*(#.*)?\r?$)", re.MULTILINE)   # a YAML mapping value that is a number


def _replace_number(rng, study, names, make) -> tuple[str, bool]:
    """Put ``make()`` where a number was (YAML), or as a new key of a random record (JSON Lines)."""
    name = _pick(rng, names)
    data = (study / name).read_bytes()
    if name.endswith(".jsonl"):
        lines = data.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        lines[i] = lines[i].rstrip().removesuffix(b"}") + b', "n": ' + make() + b"}\n"
        _rewrite(study / name, b"".join(lines))
        return name, True
    spots = list(_NUMBER.finditer(data))
    spot = rng.choice(spots)
    _rewrite(study / name, data[: spot.start()] + make() + data[spot.end():])
    return name, True


def m_huge_int(rng, study):
    digits = rng.randint(4_301, 60_000)
    name, invalid = _replace_number(rng, study, PLAN_FILES, lambda: b"9" * digits)
    return f"an integer of {digits} digits in {name}", invalid


def m_non_finite(rng, study):
    name = _pick(rng, ("prompts.jsonl", "thresholds.yaml", "study.yaml"))
    choices = [b"NaN", b"Infinity", b"-Infinity", b"1e999"] if name.endswith(".jsonl") else [b".nan", b".inf", b"-.inf", b".NaN", b"1.0e+999"]
    token = rng.choice(choices)
    name, invalid = _replace_number(rng, study, (name,), lambda: token)
    return f"{token.decode()} in {name}", invalid


def m_deep_yaml(rng, study):
    name = _pick(rng, YAML_FILES)
    depth = rng.choice([100, 1_000, 10_000, 100_000])
    style = rng.choice(["flow-list", "flow-map", "block"])
    if style == "flow-list":
        tail = "deep: " + "[" * depth + "]" * depth + "\n"
    elif style == "flow-map":
        tail = "deep: " + "{a: " * depth + "1" + "}" * depth + "\n"
    else:
        depth = min(depth, 3_000)
        tail = "deep:\n" + "".join("  " * i + "- k:\n" for i in range(1, depth)) + "  " * depth + "v: 1\n"
    path = study / name
    _rewrite(path, path.read_bytes() + tail.encode())
    return f"YAML {style} nesting {depth} deep in {name}", True


def m_deep_json(rng, study):
    depth = rng.choice([100, 1_000, 100_000, 1_000_000])
    path = study / "prompts.jsonl"
    line = '{"id": "deep", "x": ' + rng.choice(["[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth]) + "}\n"
    _rewrite(path, path.read_bytes() + line.encode())
    return f"JSON nesting {depth} deep in prompts.jsonl", True


def m_alias_bomb(rng, study):
    name = _pick(rng, YAML_FILES)
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, rng.randint(6, 12))]
    path = study / name
    _rewrite(path, path.read_bytes() + ("\n".join(levels) + "\n").encode())
    return f"alias bomb ({len(levels)} levels) in {name}", True


def m_huge_string(rng, study):
    name = _pick(rng)
    data = (study / name).read_bytes()
    quoted = list(re.finditer(rb'"[^"\n]*"', data))
    huge = b'"' + bytes([rng.choice(b"AZaz09 ")]) * rng.randint(50_000, 200_000) + b'"'
    if quoted:
        spot = rng.choice(quoted)
        _rewrite(study / name, data[: spot.start()] + huge + data[spot.end():])
    else:
        _rewrite(study / name, data + b"\nhuge: " + huge + b"\n")
    return f"a string of {len(huge):,} characters in {name}", False


def m_symlink(rng, study):
    name = _pick(rng)
    path = study / name
    where = rng.choice(["outside", "inside"])
    if where == "outside":
        repo = study.parent.parent
        target = _outside(repo) / name
        target.parent.mkdir()
    else:
        target = study.parent.parent / f"shared-{name}"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    return f"{name} symlinked {where} the repository", True


def _outside(repo: Path) -> Path:
    """A folder beside the case's repository (outside it), removed with the case."""
    return repo.parent / f"{repo.name}-outside"


def m_replace_file(rng, study):
    name = _pick(rng)
    path = study / name
    kind = rng.choice(["empty", "directory", "binary", "latin1", "missing", "sparse-huge", "fifo", "devnull"])
    _writable(path)
    path.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))))
    elif kind == "latin1":
        path.write_bytes("schema_version: 1\nnote: caf\xe9\n".encode("latin-1"))
    elif kind == "sparse-huge":
        with open(path, "wb") as handle:
            handle.truncate(rng.choice([65 << 20, 1 << 30]))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "devnull":
        path.symlink_to(os.devnull)
    return f"{name} replaced by {kind}", True


def m_yaml_tags(rng, study):
    name = _pick(rng, YAML_FILES)
    tag = rng.choice(["!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "2024-13-45", "!!timestamp 2024-99-99",
                      "!!set {a, b}", "!!omap [a: 1]", "!!int 0x" + "f" * 5000, "!!float nan", "!!str", "!custom x",
                      "0o" + "7" * 5000, "1_" * 3000 + "1", "? [a, b]\n: c"])
    path = study / name
    _rewrite(path, path.read_bytes() + f"\nextra: {tag}\n".encode())
    return f"YAML value {tag[:30]!r} in {name}", True


def m_duplicate_key(rng, study):
    name = _pick(rng, YAML_FILES)
    lines = (study / name).read_bytes().splitlines(keepends=True)
    top = [line for line in lines if re.match(rb"^[a-z_]+:", line)]
    _rewrite(study / name, b"".join(lines) + rng.choice(top))
    return f"duplicate top-level key in {name}", True


def m_wrong_type(rng, study):
    name = _pick(rng, YAML_FILES)
    data = (study / name).read_bytes()
    keys = list(re.finditer(rb"(?m)^(\s*)([a-z_]+):[ ]*(\S.*)?$", data))
    spot = rng.choice(keys)
    value = rng.choice([b"null", b"[]", b"{}", b"[1, 2]", b"{a: b}", b"true", b"-1", b"''", b"0"])
    _rewrite(study / name, data[: spot.start()] + spot.group(1) + spot.group(2) + b": " + value + data[spot.end():])
    return f"{spot.group(2).decode()}: {value.decode()} in {name}", False


MUTATIONS = [m_flip_bytes, m_random_bytes, m_truncate, m_insert, m_delete_line, m_swap_lines, m_duplicate_chunk,
             m_huge_int, m_non_finite, m_deep_yaml, m_deep_json, m_alias_bomb, m_huge_string, m_symlink,
             m_replace_file, m_yaml_tags, m_duplicate_key, m_wrong_type]


# ---------------------------------------------------------------- running

@dataclass
class Outcome:
    command: str
    code: int | None          # None: killed after the timeout (a hang)
    seconds: float
    stdout: str = ""
    stderr: str = ""


@dataclass
class Case:
    index: int
    mutation: str
    invalid: bool
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def build_case(rng: random.Random, index: int, workdir: Path, cycle: bool = False) -> tuple[Path, str, bool]:
    """A git repository holding a mutated copy of the demo; returns the study folder and the mutation
    (``cycle``: the mutations in turn, so that a short run meets every one; else drawn at random)."""
    repo = workdir / f"case-{index:04d}"
    study = repo / "preregistrations" / "demo"
    study.mkdir(parents=True)
    for name in PLAN_FILES:
        shutil.copyfile(DEMO / name, study / name)
    mutate = MUTATIONS[index % len(MUTATIONS)] if cycle else rng.choice(MUTATIONS)
    description, invalid = mutate(rng, study)
    _git(repo, "init", "-q", "-b", "main")
    big = [p.relative_to(repo).as_posix() for p in study.iterdir() if p.is_file() and not p.is_symlink() and p.stat().st_size > 1 << 20]
    (repo / ".git" / "info" / "exclude").write_text("".join(f"/{rel}\n" for rel in big))  # git would hash a sparse GiB
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=fuzz", "-c", "user.email=fuzz@lockstep.invalid", "commit", "-q", "--allow-empty", "-m", "fuzz")
    return study, f"{mutate.__name__[2:]}: {description}", invalid


def _child(args: list[str], cwd: Path, out: Path, err: Path) -> None:
    """Run one lockstep command in this forked process; its exit code is the command's."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    os.chdir(cwd)
    with open(out, "wb") as o, open(err, "wb") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's streams, for its whole (short) life
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    from lockstep.cli import cli

    try:
        cli.main(args=args, prog_name="lockstep", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback is what this tool counts
        traceback.print_exc()
        code = TRACEBACK_EXIT
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(args: list[str], cwd: Path, timeout: float) -> Outcome:
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="lockstep-fuzz-io-") as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        started = time.monotonic()
        child = context.Process(target=_child, args=(args, cwd, out, err))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            code = None
        else:
            code = child.exitcode
        seconds = time.monotonic() - started

        def read(path: Path) -> str:
            return path.read_bytes()[:200_000].decode(errors="replace") if path.exists() else ""

        return Outcome(args[0], code, seconds, read(out), read(err))


def judge(case: Case, study: Path) -> None:
    """Record every way the case's commands broke the contract (see the module docstring)."""
    for o in case.outcomes:
        if o.code is None:
            case.failures.append(f"hang: {o.command} ran past the timeout")
            continue
        if o.code == TRACEBACK_EXIT or "Traceback (most recent call last)" in o.stderr or "Aborted!" in o.stderr:
            case.failures.append(f"traceback: {o.command}: {o.stderr.strip().splitlines()[-1][:300] if o.stderr.strip() else o.code}")
        elif o.code < 0:
            case.failures.append(f"killed: {o.command} died of signal {-o.code}")
        elif o.code != 0 and not o.stderr.startswith("error: ") and o.command != "verify":
            case.failures.append(f"unclear: {o.command} exited {o.code} without an 'error: ' message: {o.stderr[:200]!r}")
        longest = max((len(line) for line in (o.stdout + o.stderr).splitlines()), default=0)
        if longest > MAX_LINE:
            case.failures.append(f"long message: {o.command} printed a line of {longest:,} characters")
    by_command = {o.command: o for o in case.outcomes}
    if case.invalid and by_command["validate"].code == 0:
        case.failures.append("accepted: validate exited 0 on a certainly invalid study")
    prereg = by_command.get("prereg")
    if prereg is not None and prereg.code not in (0, None) and (study / "prereg.lock.json").exists():
        case.failures.append("half-written: prereg was refused but left prereg.lock.json")
    verify = by_command.get("verify")
    if verify is not None and verify.code not in (0, None):
        case.failures.append(f"verify of a fresh freeze exited {verify.code}: {verify.stdout[-300:]!r}")


def fuzz(n: int, seed: int, timeout: float, workdir: Path, log=None, cycle: bool = False, verify: bool = True) -> list[Case]:
    """Build and run ``n`` cases (``verify``: also verify every study whose freeze succeeded)."""
    import lockstep.cli  # noqa: F401 - imported once here, so that each forked command starts warm

    rng = random.Random(seed)
    cases = []
    for index in range(n):
        study, mutation, invalid = build_case(rng, index, workdir, cycle)
        case = Case(index, mutation, invalid)
        case.outcomes.append(run_command(["validate", str(study)], study.parent.parent, timeout))
        case.outcomes.append(run_command(["prereg", str(study)], study.parent.parent, timeout))
        if verify and case.outcomes[-1].code == 0:
            case.outcomes.append(run_command(["verify", str(study)], study.parent.parent, timeout))
        judge(case, study)
        cases.append(case)
        if log is not None:
            log(case)
        shutil.rmtree(study.parent.parent, ignore_errors=True)
        shutil.rmtree(_outside(study.parent.parent), ignore_errors=True)
    return cases


def summary(cases: list[Case]) -> dict:
    kinds = Counter(f.split(":", 1)[0] for c in cases for f in c.failures)
    codes = Counter(c.outcomes[0].code for c in cases)
    return {
        "cases": len(cases),
        "tracebacks": kinds["traceback"],
        "hangs": kinds["hang"],
        "failing_cases": sum(bool(c.failures) for c in cases),
        "failures_by_kind": dict(sorted(kinds.items())),
        "validate_exit_codes": {str(k): v for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))},
        "refused_by_validate": sum(c.outcomes[0].code not in (0, None) for c in cases),
        "frozen": sum(c.outcomes[1].code == 0 for c in cases),
        "mutations": dict(sorted(Counter(c.mutation.split(":", 1)[0] for c in cases).items())),
        "slowest_command_s": round(max(o.seconds for c in cases for o in c.outcomes), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="number of fuzzed study folders (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a command may run before it counts as a hang")
    parser.add_argument("--cycle", action="store_true", help="take the mutations in turn instead of at random")
    parser.add_argument("--verbose", action="store_true", help="print every case, not only the failing ones")
    args = parser.parse_args(argv)

    def log(case: Case) -> None:
        if case.failures or args.verbose:
            seconds = sum(o.seconds for o in case.outcomes)
            print(f"case {case.index:4d} [{case.mutation}] {seconds:.1f} s " + ("; ".join(case.failures) or "ok"), flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lockstep-fuzz-") as tmp:
        cases = fuzz(args.n, args.seed, args.timeout, Path(tmp), log, cycle=args.cycle)
    result = summary(cases)
    print(f"fuzzed {result['cases']} study folders (seed {args.seed}, timeout {args.timeout:g} s) in "
          f"{time.monotonic() - started:.0f} s: {result['tracebacks']} tracebacks, {result['hangs']} hangs, "
          f"{result['failing_cases']} failing cases")
    for key, value in result.items():
        print(f"  {key}: {value}")
    return 1 if result["failing_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
