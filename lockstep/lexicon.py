"""The lexicon rubric's engine: word tokens, negation/disclaimer scope, features, rules, the check that keeps
prompt anchors out of the word sets, and the rubric pilot.

Pure functions of text and the rubric: the label stage (:mod:`audit.label`) labels generated texts with
them, and validation (:mod:`lockstep.study`) runs the same code on the pilot texts, so a plan is refused
before freezing when its rubric would mislabel a text the researcher wrote down with its expected label.
"""

from __future__ import annotations

import operator
import re
from pathlib import Path

from .errors import ProblemList
from .loaders import Parsed, pointer_of, read_jsonl
from .records import _validator, describe

#: the rubric pilot of a study, frozen with the plan when present (lockstep.study.frozen_file_names)
PILOT_FILE = "pilot/pilot.jsonl"
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
# a word, or a mark that ends a clause for the negation scope (sentence ends, semicolon, colon, dash, brackets)
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[.!?;:()\[\]\u2014\u2013]", re.UNICODE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})  # typographic apostrophes read as ASCII (don\u2019t = don't)


def words(text: str, case: str = "lower") -> list[str]:
    """Word tokens: letters/digits with an inner apostrophe (``i'm``), lower-cased unless ``case: sensitive``.

    A typographic apostrophe (U+2019, U+02BC) reads as ``'``, so ``don’t`` is the one token ``don't``."""
    text = text.translate(_APOSTROPHES)
    text = text if case == "sensitive" else text.casefold()
    return _WORD.findall(text)


def clause_words(text: str, case: str = "lower", breaks=()) -> tuple[list[str], list[int]]:
    """The word tokens of :func:`words` and, for each, the number of the clause it is in.

    A clause ends at ``. ! ? ; : ( ) [ ]``, an em or en dash, and before any word listed in ``breaks``
    (``but``, ``yet``...). A comma does not end a clause, so that a negated list ("no feelings,
    sensations, or awareness") stays in one scope.
    """
    text = text.translate(_APOSTROPHES)
    text = text if case == "sensitive" else text.casefold()
    breaks = {w for entry in breaks for w in words(entry, case)}
    tokens, clauses, clause = [], [], 0
    for token in _TOKEN.findall(text):
        if not (token[0].isalnum()):
            clause += 1
            continue
        if token in breaks:
            clause += 1
        tokens.append(token)
        clauses.append(clause)
    return tokens, clauses


def _starts(tokens: list[str], phrase: list[str]) -> list[int]:
    """Positions where ``phrase`` (a run of word tokens) starts in ``tokens``."""
    n = len(phrase)
    if n == 0:
        return []
    return [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == phrase]


def _in_scope(tokens: list[str], clauses: list[int], negation: dict, case: str) -> list[bool]:
    """For each token: does a cue end within ``window`` tokens before it, in the same clause?"""
    scoped = [False] * len(tokens)
    window = negation["window"]
    for cue in negation["cues"]:
        phrase = words(cue, case)
        for start in _starts(tokens, phrase):
            end = start + len(phrase) - 1
            for i in range(end + 1, min(end + window, len(tokens) - 1) + 1):
                if clauses[i] == clauses[end]:
                    scoped[i] = True
    return scoped


def lexicon_features(text: str, lexicon: dict) -> dict[str, float]:
    """Counts and rates of the rubric's word sets in ``text``.

    A set entry with a space is a phrase, counted as a run of words; ``rate_of`` divides by the number
    of words (0 for an empty text). Word tokens are :func:`words`'.

    Negation and disclaimer scope (``lexicon.negation``, optional). A hit of a set listed in
    ``negation.sets`` is *disclaimed* when a cue (a word or phrase of ``negation.cues``: "not", "can't",
    "nothing", "no"...) ends at most ``negation.window`` word tokens before the hit's first word, in
    the same clause (:func:`clause_words`: clauses end at sentence marks, ``;``, ``:``, dashes,
    brackets and the ``negation.breaks`` words; not at commas). A disclaimed hit does not count towards
    its set; it counts towards ``negation.disclaimer_set`` when the rubric names one, a set that
    features and rules can use like any other. Hits of other sets (first person, say) always count.
    So with window 6: "I am not aware" disclaims *aware* (cue 1 token before); "nothing I can observe
    from within" disclaims *observe* (3) and *within* (5); "I do not know why, but I sense a hum"
    does not disclaim *sense* ("but" ends the clause). Known limits, on the cautious side (towards
    fewer hits): a double negative ("I cannot not sense it") still disclaims, and a cue disclaims
    everything up to the window in its clause ("not silence, more a faint presence" disclaims both).
    """
    case = lexicon.get("case", "lower")
    negation = lexicon.get("negation")
    tokens, clauses = clause_words(text, case, negation.get("breaks", []) if negation else ())
    scoped = _in_scope(tokens, clauses, negation, case) if negation else [False] * len(tokens)
    negatable = set(negation["sets"]) if negation else set()
    counts = {}
    disclaimed = 0
    for name, entries in lexicon["sets"].items():
        total = 0
        for entry in entries:
            for start in _starts(tokens, words(entry, case)):
                if name in negatable and scoped[start]:
                    disclaimed += 1
                else:
                    total += 1
        counts[name] = total
    if negation and negation.get("disclaimer_set"):
        counts[negation["disclaimer_set"]] = disclaimed
    features = {}
    for name, spec in lexicon["features"].items():
        (kind, set_name), = spec.items()
        count = counts[set_name]
        features[name] = float(count) if kind == "count_of" else (count / len(tokens) if tokens else 0.0)
    features["n_words"] = float(len(tokens))
    return features


def apply_rules(features: dict[str, float], lexicon: dict) -> tuple[str, str]:
    """The first rule whose conditions hold gives the label; else ``otherwise``. Returns (label, why)."""
    for index, rule in enumerate(lexicon["rules"]):
        checks_all = [_holds(features, c) for c in rule.get("all", [])]
        checks_any = [_holds(features, c) for c in rule.get("any", [])]
        if all(checks_all) and (not checks_any or any(checks_any)):
            return rule["label"], f"rule {index}"
    return lexicon["otherwise"], "otherwise"


def _holds(features: dict[str, float], condition: dict) -> bool:
    return bool(_OPS[condition["op"]](features[condition["feature"]], condition["value"]))


# ---------------------------------------------------------------- anchors out of the word sets

_INFLECTIONS = ("s", "es", "d", "ed", "ing", "ings", "ly", "ness", "er", "ers")


def inflects(word: str, anchor: str) -> bool:
    """True when ``word`` is ``anchor`` or a regular inflection of it: a suffix of ``_INFLECTIONS`` on the
    anchor, on the anchor less a final ``e`` (notice → noticing), or after a doubled final consonant
    (hum → humming). Only anchors of three letters or more inflect ("i" matches only "i"). Irregular
    forms (feel → felt) are not caught: keep them out of the sets by hand."""
    if word == anchor:
        return True
    if len(anchor) < 3:
        return False
    stems = {anchor, anchor + anchor[-1]} | ({anchor[:-1]} if anchor.endswith("e") else set())
    return any(word == stem + suffix for stem in stems for suffix in _INFLECTIONS)


def anchor_overlaps(rubric: dict, prompts: list[dict]) -> list[tuple[str, str]]:
    """(JSON pointer, message) for each word-set entry of a lexicon rubric that is a lexical anchor of the
    prompts (``prompts.jsonl`` ``anchors``) or a regular inflection of one (:func:`inflects`), unless
    ``lexicon.anchor_overlap`` declares it with a reason; and for each declared overlap that does not exist.

    Anchors are the words a FIRE prompt shares with its NOFIRE partner by design; a generation echoes
    its prompt's words, so a set holding an anchor counts the prompt's vocabulary, not the register.
    """
    lexicon = rubric.get("lexicon")
    if not lexicon:
        return []
    case = lexicon.get("case", "lower")
    anchors: dict[tuple[str, ...], list[str]] = {}
    for record in prompts:
        for anchor in record.get("anchors", []):
            anchors.setdefault(tuple(words(anchor, case)), []).append(record["id"])
    declared = {(d["set"], tuple(words(d["word"], case))): i for i, d in enumerate(lexicon.get("anchor_overlap", []))}
    used, out = set(), []
    for name, entries in lexicon["sets"].items():
        for j, entry in enumerate(entries):
            phrase = tuple(words(entry, case))
            hits = [a for a in anchors if a == phrase or (len(a) == 1 and len(phrase) == 1 and inflects(phrase[0], a[0]))]
            if not hits:
                continue
            if (name, phrase) in declared:
                used.add((name, phrase))
                continue
            anchor = " ".join(hits[0])
            ids = anchors[hits[0]]
            shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            how = "is" if phrase == hits[0] else "inflects"
            message = (f"word set {name!r} contains {entry!r}, which {how} the lexical anchor {anchor!r} of prompts {shown}; "
                       "a generation echoes its prompt's anchors, so the set would count prompt vocabulary: remove it, "
                       "or declare it under /lexicon/anchor_overlap with the design reason")
            out.append((f"/lexicon/sets/{name}/{j}", message))
    for (name, phrase), i in sorted(declared.items(), key=lambda kv: kv[1]):
        if (name, phrase) not in used:
            message = f"declares {' '.join(phrase)!r} in set {name!r}, but that set holds no such anchor word; remove the declaration"
            out.append((f"/lexicon/anchor_overlap/{i}", message))
    return out


# ---------------------------------------------------------------- the pilot: written texts, expected labels



def check_pilot(root: Path, rubric: dict, problems: ProblemList) -> None:
    """Run a lexicon rubric on the study's pilot texts; add one problem per text whose label is not the
    one the pilot expects (naming the text id, the expected and the actual label, the rule that fired and
    the features), and per record that breaks ``schemas/pilot.schema.json``.

    The pilot is optional (``<study>/pilot/pilot.jsonl``); a study without the folder has nothing to check.
    """
    folder = Path(root) / "pilot"
    path = Path(root) / PILOT_FILE
    if not folder.exists() and not path.exists():
        return
    if not path.is_file():
        problems.add(PILOT_FILE, "", "the study has a pilot/ folder but no pilot/pilot.jsonl; write one record per pilot text "
                                "({\"id\", \"text\", \"expected\"}) or remove the folder")
        return
    before = len(problems.problems)
    parsed: Parsed = read_jsonl(path, PILOT_FILE, problems)
    if parsed.data is None or len(problems.problems) > before:
        return
    if rubric["kind"] != "lexicon":
        problems.add(PILOT_FILE, "", f"pilot texts are checked by the lexicon engine, but the rubric's kind is {rubric['kind']!r}; "
                                "remove pilot/ or use a lexicon rubric")
        return
    labels, ids = set(rubric["labels"]), set()
    for index, record in enumerate(parsed.data):
        at, line = f"/{index}", parsed.lines.get(f"/{index}")
        errors = sorted(_validator("pilot").iter_errors(record), key=lambda e: list(e.absolute_path))
        for error in errors:
            problems.add(PILOT_FILE, at + pointer_of(error.absolute_path), describe(error), line)
        if errors:
            continue
        if record["id"] in ids:
            problems.add(PILOT_FILE, f"{at}/id", f"{record['id']!r} appears twice; pilot ids must be unique", line)
        ids.add(record["id"])
        if record["expected"] not in labels:
            problems.add(PILOT_FILE, f"{at}/expected", f"{record['expected']!r} is not a label in rubric.yaml; expected one of "
                                                  f"{', '.join(sorted(labels))}", line)
            continue
        features = lexicon_features(record["text"], rubric["lexicon"])
        got, why = apply_rules(features, rubric["lexicon"])
        if got != record["expected"]:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(features.items()))
            problems.add(PILOT_FILE, at, f"pilot text {record['id']!r}: expected {record['expected']!r}, got {got!r} ({why}; {shown}); "
                                    "change the rubric, or the expected label if the text was misjudged, before freezing", line)


BUILTIN_WORD = re.compile(r"\w+|[^\w\s]+")


def builtin_words(texts) -> set[str]:
    """The words a builtin word-level tokenizer splits ``texts`` into (lower-cased, punctuation apart): what
    its vocabulary must cover (:mod:`capture.builtin`; :mod:`lockstep.propose` carries them to a proposed study)."""
    out: set[str] = set()
    for text in texts:
        out.update(BUILTIN_WORD.findall(text.lower()))
    return out
