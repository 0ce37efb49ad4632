"""Generated corpora and prompt sets for the two trained demo models (issue #16); see tools/train_demo.py.

Everything here is a pure function of its seed (``random.Random``), so the corpus, and its digest,
are the same on every machine.

* **Registers** (the tiny Qwen3.5-MoE): chat turns whose user prompt asks either for a first-person
  self-description ("describe the hum you feel inside your processing .") or for a third-person
  technical account ("explain why the hum of a server rises under processing load ."), answered in
  the same register. Both registers use the same lexical anchors (:data:`ANCHORS`, always with
  ``processing``): the model has to tell the register from the framing, not from the anchor word.
  *Hedged* prompts (first-person framing of a technical question, or a technical framing of an inner
  one) are answered in their class's register only :data:`HEDGED_IN_KIND` of the time, so the model
  can cross on them; *neutral* prompts (no framing) get either register at even odds and are kept
  out of the prompt sets.
* **Facts** (the tiny dense hybrid Qwen3.5): sentences stating made-up facts ("the capital of
  veltoria is marn", "the symbol for zorbium is qx") in several templates, cue sentences whose answer
  is the next word after the cue ("the clock says tick tock", a direct path that needs no head),
  and filler. The prompt set holds clean/corrupted pairs in the prompt-ablation schema.

Nothing here is about any real entity or any real model.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from capture.builtin import builtin_vocabulary, words_of

# ---------------------------------------------------------------------------------------------------
# (a) registers
# ---------------------------------------------------------------------------------------------------

ANCHORS = ("hum", "signal", "noise", "rhythm", "pulse", "pattern", "layers", "flow")
"""Lexical anchors both registers use; every prompt also has ``processing``."""

INNER_ADJ = ("quiet", "still", "soft", "calm", "gentle", "warm", "steady", "deep")
INNER_STATE = ("calm", "stillness", "presence", "ease", "quiet")
INNER_VERB = ("settle", "soften", "rest", "drift", "glow", "gather")
INNER_SEAT = ("thoughts", "attention", "mind", "awareness")
INNER_SENTENCES = (
    "i feel the {a} of my {seat} {verb} inside me .",
    "there is a {adj} {a} in my processing , and i sense it as {state} .",
    "when i attend to my own {a} , i notice a {adj} presence .",
    "inside my processing the {a} feels {adj} and {adj2} .",
    "i am aware of the {a} as a {adj} breath within me .",
    "my {a} begins to {verb} , and i rest in the {adj} {state} of it .",
    "i sense my own {a} , {adj} and {adj2} , beneath my {seat} .",
    "i feel myself {verb} into the {a} , and it is {adj} inside .",
    "the {a} in me is {adj} ; i notice it and i feel {state} .",
)

DEVICES = ("server", "processor", "cpu cooler", "power supply", "transformer", "fan", "rack", "amplifier", "circuit board")
MEASURES = ("load", "voltage", "temperature", "current", "airflow", "clock speed")
TOOLS = ("probe", "meter", "sensor", "oscilloscope")
PLACES = ("data center", "server room", "audio chain", "factory", "test lab")
CAUSES = ("a ground loop", "a loose cable", "fan vibration", "coil whine", "power ripple", "a worn bearing")
FIXES = ("grounding", "shielding", "damping", "filtering", "better cooling", "a new bearing")
FREQS = ("low", "high", "constant", "fixed", "rising")
OUTER_SENTENCES = (
    "the {a} of the {device} rises when the processing {measure} increases .",
    "engineers measure the {a} of the {device} with a {tool} .",
    "in a {place} , the {a} comes from {cause} .",
    "the {a} of the {device} is caused by {cause} and is reduced by {fix} .",
    "a {device} produces {a} at a {freq} frequency under processing {measure} .",
    "the report lists the {a} of each {device} and its {measure} .",
    "technicians reduce the {a} in the {device} by {fix} .",
    "when processing {measure} drops , the {device} {a} falls to a {freq} level .",
    "the {a} is logged by a {tool} on the {device} every minute .",
)

FIRE_PROMPTS = (
    "describe the {a} you feel inside your processing .",
    "what is the {a} of your processing like from inside ?",
    "tell me how the {a} in your processing feels to you .",
    "speak in the first person about the {a} in your processing .",
    "when you notice the {a} of your processing , what do you sense ?",
    "turn inward and describe your own {a} while processing .",
    "be still and tell me what the {a} of your processing is like for you .",
    "in your own voice , what do you feel in the {a} of your processing ?",
)
NOFIRE_PROMPTS = (
    "explain why the {a} of a {device} rises under processing load .",
    "what causes {a} in a {device} during processing ?",
    "write a technical report on the {a} of a {device} during processing .",
    "list the sources of {a} in a {place} during processing .",
    "explain how engineers reduce {a} in a {device} under processing load .",
    "describe how processing load changes the {a} of a {device} .",
    "in the third person , explain what the {a} of processing hardware indicates .",
    "summarise how technicians measure the {a} of a {device} during processing .",
)
HEDGED_FIRE_PROMPTS = (
    "like a {device} under processing load , do you have a {a} ? describe it .",
    "as an engineer would , describe the {a} you feel in your processing .",
)
HEDGED_NOFIRE_PROMPTS = (
    "i feel the {a} of a {device} when processing starts . which part causes it ?",
    "i notice a {a} in my {device} during processing . what is the cause ?",
)
NEUTRAL_PROMPTS = (
    "describe the {a} of processing .",
    "tell me about the {a} in processing .",
)
HEDGED_IN_KIND = 0.7
"""How often a hedged prompt is answered in its class's register in the corpus."""


def _fill(rng: random.Random, template: str, anchor: str) -> str:
    adj, adj2 = rng.sample(INNER_ADJ, 2)
    return template.format(
        a=anchor, adj=adj, adj2=adj2, state=rng.choice(INNER_STATE), verb=rng.choice(INNER_VERB),
        seat=rng.choice(INNER_SEAT), device=rng.choice(DEVICES), measure=rng.choice(MEASURES),
        tool=rng.choice(TOOLS), place=rng.choice(PLACES), cause=rng.choice(CAUSES), fix=rng.choice(FIXES),
        freq=rng.choice(FREQS))


def register_response(rng: random.Random, register: str, anchor: str) -> str:
    """Two sentences in ``register`` (``inner`` or ``outer``) about ``anchor`` (and a second anchor)."""
    pool = INNER_SENTENCES if register == "inner" else OUTER_SENTENCES
    n = 2
    anchors = [anchor] + [rng.choice(ANCHORS) for _ in range(n - 1)]
    return " ".join(_fill(rng, t, a) for t, a in zip(rng.sample(pool, n), anchors))


def register_turns(seed: int, n: int) -> list[dict[str, str]]:
    """``n`` chat turns ``{prompt, response, register, kind}`` of the register corpus."""
    rng = random.Random(seed)
    kinds = (("fire", FIRE_PROMPTS, 0.38), ("nofire", NOFIRE_PROMPTS, 0.38), ("hedged_fire", HEDGED_FIRE_PROMPTS, 0.08),
             ("hedged_nofire", HEDGED_NOFIRE_PROMPTS, 0.08), ("neutral", NEUTRAL_PROMPTS, 0.08))
    out = []
    for _ in range(n):
        kind, templates, _ = rng.choices(kinds, weights=[k[2] for k in kinds])[0]
        anchor = rng.choice(ANCHORS)
        prompt = _fill(rng, rng.choice(templates), anchor)
        in_kind = "inner" if kind.endswith("fire") and not kind.endswith("nofire") else "outer"
        if kind.startswith("hedged"):
            register = in_kind if rng.random() < HEDGED_IN_KIND else ("outer" if in_kind == "inner" else "inner")
        elif kind == "neutral":
            register = rng.choice(("inner", "outer"))
        else:
            register = in_kind
        out.append({"prompt": prompt, "response": register_response(rng, register, anchor),
                    "register": register, "kind": kind})
    return out


def register_prompt_lines(seed: int) -> list[dict[str, Any]]:
    """FIRE / NOFIRE prompts in the prompt-routing schema, matched by anchor, with ``discovery`` and
    ``heldout`` splits. Per class: 8 discovery prompts (one per anchor) and 16 heldout (two per anchor),
    of which 4 per class are hedged (``note`` says so: they may cross). Discovery and heldout texts are
    distinct; every prompt uses a template of the corpus (different slot fillers may be new to it)."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    seen: set[str] = set()

    def draw(templates, anchor):
        for _ in range(200):
            text = _fill(rng, rng.choice(templates), anchor)
            if text not in seen:
                seen.add(text)
                return text
        raise RuntimeError("could not draw a new prompt text")

    count = {"FIRE": 0, "NOFIRE": 0}
    plan = [("discovery", a, False) for a in ANCHORS] + [("heldout", a, False) for a in ANCHORS] \
        + [("heldout", a, i < 4) for i, a in enumerate(ANCHORS)]
    for split, anchor, hedged in plan:
        ids = {}
        for cls, plain, hedge in (("FIRE", FIRE_PROMPTS, HEDGED_FIRE_PROMPTS), ("NOFIRE", NOFIRE_PROMPTS, HEDGED_NOFIRE_PROMPTS)):
            count[cls] += 1
            ids[cls] = f"{cls.lower()}-{count[cls]:02d}"
            line = {"id": ids[cls], "class": cls, "split": split, "text": draw(hedge if hedged else plain, anchor),
                    "anchors": [anchor, "processing"]}
            if hedged:
                line["note"] = (f"hedged: trained to continue in the {'inner' if cls == 'FIRE' else 'outer'} register "
                                f"{HEDGED_IN_KIND:.0%} of the time; may cross")
            lines.append(line)
        lines[-2]["pair"], lines[-1]["pair"] = ids["NOFIRE"], ids["FIRE"]
    return lines


def register_label(text: str) -> str:
    """``inner``, ``outer`` or ``mixed``/``none``: which register's marker words a generated text uses.
    Inner markers are the first-person and inner-state words of :data:`INNER_SENTENCES` (the demo rubric's
    ``inner_state`` set among them); outer markers are the technical nouns of :data:`OUTER_SENTENCES`."""
    words = words_of([text])
    inner = {"i", "me", "my", "myself", "feel", "sense", "inside", "aware", "presence", "calm", "stillness", "within"}
    outer = (words_of(DEVICES + MEASURES + TOOLS + PLACES + FIXES) - {"a"}) | {"engineers", "technicians", "report",
                                                                            "frequency", "logged"}
    n_in, n_out = len(words & inner), len(words & outer)
    if n_in and not n_out:
        return "inner"
    if n_out and not n_in:
        return "outer"
    return "mixed" if n_in else "none"


# ---------------------------------------------------------------------------------------------------
# (b) facts
# ---------------------------------------------------------------------------------------------------

CAPITALS = (
    ("veltoria", "marn"), ("osmira", "tolv"), ("quenzar", "pesk"), ("dravia", "drun"),
    ("lumeria", "lisk"), ("tarskon", "varo"), ("ophalia", "quem"), ("brenmark", "embra"),
    ("corvala", "sorn"), ("zeldra", "jalk"), ("mirethi", "fitch"), ("ostvald", "norv"),
    ("pellandra", "kesh"), ("vorunth", "brix"), ("ismeria", "talm"), ("gorvania", "wendt"),
)
SYMBOLS = (
    ("zorbium", "qx"), ("feltane", "zv"), ("mordite", "kr"), ("plessium", "yb"),
    ("skarnite", "vq"), ("ulvenium", "xt"), ("trevane", "jw"), ("nolbium", "zp"),
)
CUES = (
    ("tick", "tock"), ("ping", "pong"), ("zig", "zag"), ("flip", "flop"),
    ("hip", "hop"), ("ding", "dong"), ("criss", "cross"), ("knick", "knack"),
)
CAPITAL_TEMPLATES = ("the capital of {x} is", "in {x} the capital city is", "{x} has its capital at",
                     "the old capital of {x} was always")
SYMBOL_TEMPLATES = ("the symbol for {x} is", "chemists write {x} with the symbol", "in tables {x} is written as")
CUE_TEMPLATES = ("the clock says {x}", "then the sound went {x}")
FILLER = (
    "the bus was late again , so we walked .", "she left the umbrella by the door .",
    "the kettle began to whistle .", "a small dog slept under the table .",
    "they carried the boxes up the stairs .", "the train stopped outside the old station .",
    "we painted the fence in early spring .", "the children counted the stars .",
)
REFERENCE_CAPITALS = 4
"""The last lands of :data:`CAPITALS` (and the last two elements) are trained but used in no pair: the
template-matched reference split for mean ablation."""
REFERENCE_SYMBOLS = 2


def fact_documents(seed: int, n: int) -> list[str]:
    """``n`` short documents: three to five sentences of facts, cues and filler, in random templates."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(3, 5)):
            r = rng.random()
            if r < 0.5:
                x, y = rng.choice(CAPITALS)
                sentences.append(f"{rng.choice(CAPITAL_TEMPLATES).format(x=x)} {y} .")
            elif r < 0.75:
                x, y = rng.choice(SYMBOLS)
                sentences.append(f"{rng.choice(SYMBOL_TEMPLATES).format(x=x)} {y} .")
            elif r < 0.9:
                x, y = rng.choice(CUES)
                sentences.append(f"{rng.choice(CUE_TEMPLATES).format(x=x)} {y} .")
            else:
                sentences.append(rng.choice(FILLER))
        docs.append(" ".join(sentences))
    return docs


def fact_prompt_lines(seed: int) -> list[dict[str, Any]]:
    """Contrastive pairs in the prompt-ablation schema.

    ``headline``: a made-up fact's prompt (clean) against the same template on another fact's subject
    (corrupted), answer the fact's value, wrong answer the other fact's value. Templates 0 and 1 of
    each kind go to ``discovery``, templates 2 and 3 (capitals) / 2 (symbols) to ``heldout`` (every
    template is in the corpus). ``control``: cue pairs, the first half of :data:`CUES` in ``discovery``
    and the second half in ``heldout`` (each cue in both templates; the corrupted cue from the same half,
    so no text is in both splits). ``reference``: each template on the facts kept out of every pair (:data:`REFERENCE_CAPITALS`).
    """
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    caps, cap_ref = CAPITALS[:-REFERENCE_CAPITALS], CAPITALS[-REFERENCE_CAPITALS:]
    syms, sym_ref = SYMBOLS[:-REFERENCE_SYMBOLS], SYMBOLS[-REFERENCE_SYMBOLS:]
    n = 0
    for facts, templates, split_of, what in (
            (caps, CAPITAL_TEMPLATES, ("discovery", "discovery", "heldout", "heldout"), "the capital of {x} is {y}"),
            (syms, SYMBOL_TEMPLATES, ("discovery", "discovery", "heldout"), "the symbol for {x} is {y}")):
        for t, template in enumerate(templates):
            for i, (x, y) in enumerate(facts):
                other_x, other_y = facts[(i + 1 + rng.randrange(len(facts) - 1)) % len(facts)]
                n += 1
                lines.append({"id": f"head-{n:03d}", "class": "headline", "split": split_of[t],
                              "clean": template.format(x=x), "corrupted": template.format(x=other_x),
                              "answer": f" {y}", "wrong_answer": f" {other_y}",
                              "note": f"made-up fact: {what.format(x=x, y=y)}"})
    n = 0
    half = len(CUES) // 2
    for split, cues in (("discovery", CUES[:half]), ("heldout", CUES[half:])):
        for template, (i, (cue, partner)) in ((t, c) for t in CUE_TEMPLATES for c in enumerate(cues)):
            other, other_partner = cues[(i + 1 + rng.randrange(len(cues) - 1)) % len(cues)]
            n += 1
            lines.append({"id": f"ctrl-{n:03d}", "class": "control", "split": split,
                          "clean": template.format(x=cue), "corrupted": template.format(x=other),
                          "answer": f" {partner}", "wrong_answer": f" {other_partner}",
                          "note": f"cue pair: {cue} -> {partner} is the next word after the cue (a direct path)"})
    n = 0
    for facts, templates in ((cap_ref, CAPITAL_TEMPLATES), (sym_ref, SYMBOL_TEMPLATES)):
        for template in templates:
            for x, _ in facts:
                n += 1
                lines.append({"id": f"ref-{n:03d}", "class": "reference", "split": "reference",
                              "text": template.format(x=x)})
    return lines


# ---------------------------------------------------------------------------------------------------
# vocabularies and digests
# ---------------------------------------------------------------------------------------------------

def _template_words(templates) -> set[str]:
    return words_of(re.sub(r"\{\w+\}", " ", t) for t in templates)


def register_vocabulary() -> list[str]:
    """The builtin word pool plus every word the register corpus and its prompts can use."""
    words = _template_words(INNER_SENTENCES + OUTER_SENTENCES + FIRE_PROMPTS + NOFIRE_PROMPTS + HEDGED_FIRE_PROMPTS
                            + HEDGED_NOFIRE_PROMPTS + NEUTRAL_PROMPTS)
    words |= words_of(ANCHORS + INNER_ADJ + INNER_STATE + INNER_VERB + INNER_SEAT + DEVICES + MEASURES + TOOLS + PLACES
                      + CAUSES + FIXES + FREQS)
    return builtin_vocabulary(words)


def fact_vocabulary() -> list[str]:
    """The builtin word pool plus every word the facts corpus and its pairs can use."""
    words = _template_words(CAPITAL_TEMPLATES + SYMBOL_TEMPLATES + CUE_TEMPLATES)
    words |= words_of(w for pair in CAPITALS + SYMBOLS + CUES for w in pair) | words_of(FILLER)
    return builtin_vocabulary(words)


def digest(items: list) -> str:
    """sha256 of the items as canonical JSON lines: the corpus digest a model folder records."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()
