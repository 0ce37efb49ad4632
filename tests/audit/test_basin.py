"""The routing-basin comparison, end to end on the planted demo model and two builtin variants.

The shipped study ``preregistrations/demo-basin`` (copied into a temp git repo, frozen, captured,
labelled and audited through the CLI) declares two variants of the demo's planted model: ``perturbed`` (small seeded noise on the routers of layers 0 and 2) and ``rewired`` (the planted
expert's router row swapped with expert 2's at the planted layer). The base model generates greedily,
twice; the base itself and each variant re-read the first generation (teacher forcing). References:
the run tables themselves (per-token top-k sets, token ids), numpy and scipy on the captured W and S.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps
from studyrepo import commit_all, copy_study, git, invoke, make_writable

from lockstep import variants
from lockstep.errors import SchemaError
from lockstep.study import load_study

STUDY = "demo-basin"


def _edit_plan(study, edit) -> None:
    path = study / "study.yaml"
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    make_writable(path)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture(scope="module")
def basin(tmp_path_factory):
    """Frozen, captured, labelled and audited in a real git repository; the repo root."""
    import torch

    repo = tmp_path_factory.mktemp("basin") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study(STUDY, repo)
    commit_all(repo, "add basin study")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and much faster on a loaded machine
    try:
        for args in (("prereg",), ("capture", "--no-progress"), ("label",), ("audit",)):
            result = invoke(args[0], f"preregistrations/{STUDY}", *args[1:], cwd=repo)
            assert result.exit_code == 0, result.output
            if args[0] == "prereg":
                commit_all(repo, "freeze")
    finally:
        torch.set_num_threads(threads)
    return repo


def _run(repo, run_id):
    d = repo / "runs" / STUDY / run_id
    return (json.loads((d / "manifest.json").read_text()), pd.read_parquet(d / "topk" / "tokens.parquet"),
            np.load(d / "topk" / "idx.npy"), np.load(d / "topk" / "weight.npy"), pd.read_parquet(d / "units.parquet"))


def _claims(repo):
    ledger = json.loads((repo / "reports" / STUDY / "ledger.json").read_text())
    return {c["hypothesis"]: c for c in ledger["claims"]}


def test_teacher_forced_rereading_of_own_text_reproduces_generated_routing(basin):
    _, tokens_g, idx_g, w_g, units_g = _run(basin, "greedy")
    manifest, tokens_t, idx_t, w_t, units_t = _run(basin, "self_tf")
    assert manifest["source_run"]["run_id"] == "greedy" and manifest["decoding"]["decoding"] == "teacher_forced"
    pd.testing.assert_frame_equal(tokens_g, tokens_t)                 # the same tokens, in the same zones
    generated = tokens_g["zone"].isin(["trimmed", "spill"]).to_numpy()
    assert generated.sum() > 100
    # the top-k expert sets of every generated-zone token at every layer: exactly the same
    np.testing.assert_array_equal(np.sort(idx_g[generated], -1), np.sort(idx_t[generated], -1))
    order_g, order_t = np.argsort(idx_g, -1), np.argsort(idx_t, -1)
    np.testing.assert_allclose(np.take_along_axis(w_g, order_g, -1).astype(float),
                               np.take_along_axis(w_t, order_t, -1).astype(float), atol=2e-3)
    merged = units_g.merge(units_t, on=["prompt_id", "layer", "expert", "zone"], suffixes=("_g", "_t"))
    assert len(merged) == len(units_g)
    np.testing.assert_array_equal(merged["n_selected_g"], merged["n_selected_t"])
    np.testing.assert_allclose(merged["W_g"], merged["W_t"], atol=1e-5)


def test_manifests_record_each_variant_identity(basin):
    base, _, _, _, _ = _run(basin, "greedy")
    perturbed, _, _, _, _ = _run(basin, "perturbed_tf")
    assert (base["variant"], perturbed["variant"]) == ("base", "perturbed")
    assert base["model"]["weights_sha256"] != perturbed["model"]["weights_sha256"]
    assert base["runtime_surface"] == perturbed["runtime_surface"] == {"chat_template": "chatml", "enable_thinking": False,
                                                                      "system_prompt": None}
    # the pooling rule reads exactly these fields and names the one that differs
    why = variants.pooling_refusal({"kind": "reproduction"}, {"greedy": base, "perturbed_tf": perturbed})
    assert "weights digest" in why and "model id" not in why
    assert variants.pooling_refusal({"kind": "basin_comparison"}, {"greedy": base, "perturbed_tf": perturbed}) is None


def _jaccard(a, b):
    inter = np.array([[len(set(x) & set(y)) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)])
    return inter / (2 * a.shape[-1] - inter)


def test_comparison_numbers_against_an_independent_reference(basin):
    claims = _claims(basin)
    _, tokens, idx_g, _, units_g = _run(basin, "greedy")
    _, _, idx_r, _, units_r = _run(basin, "rewired_tf")
    trimmed = (tokens["zone"] == "trimmed").to_numpy()
    jac = _jaccard(idx_g[trimmed], idx_r[trimmed])                    # set arithmetic, token by token
    n = claims["H2"]["numbers"]
    assert n["jaccard"] == pytest.approx(jac.mean(), abs=1e-12)
    assert n["worst_layer_jaccard"] == pytest.approx(jac.mean(0).min(), abs=1e-12)

    def per_unit(units, metric):
        frame = units[units["zone"] == "trimmed"].pivot(index="prompt_id", columns=["layer", "expert"], values=metric)
        return frame.fillna(0).mean().to_numpy()

    w_g, w_r = per_unit(units_g, "W"), per_unit(units_r, "W")
    assert n["spearman_w"] == pytest.approx(sps.spearmanr(w_g, w_r).statistic, abs=1e-12)   # scipy.stats.spearmanr
    assert n["pearson_w"] == pytest.approx(np.corrcoef(w_g, w_r)[0, 1], abs=1e-9)          # numpy.corrcoef
    target = 1 * 8 + 5  # L1E5 in (layer, expert) order
    assert n["target_rank_a"] == int((w_g >= w_g[target]).sum()) == 1
    assert n["target_rank_b"] == int((w_r >= w_r[target]).sum()) > 3


def test_jaccard_of_a_model_with_itself_is_one(basin):
    n = _claims(basin)["H3"]["numbers"]
    assert n["jaccard"] == 1.0 and n["worst_layer_jaccard"] == 1.0
    assert n["spearman_w"] == pytest.approx(1.0) and n["target_rank_a"] == n["target_rank_b"] == 1


def test_perturbed_variant_keeps_the_basin_and_rewired_one_does_not(basin):
    claims = _claims(basin)
    assert claims["H1"]["status"] == "held", claims["H1"]["reason"]
    assert claims["H3"]["status"] == "held", claims["H3"]["reason"]
    assert claims["H2"]["status"] == "fell", claims["H2"]["reason"]
    failed = {c["name"] for c in claims["H2"]["criteria"] if not c["passed"]}
    assert {"min_rank_correlation", "min_worst_layer_jaccard", "max_target_rank_b"} <= failed
    assert 0.9 < claims["H1"]["numbers"]["worst_layer_jaccard"] < 1.0  # perturbed, not identical


def test_duplicate_run_reproduces_exactly_and_a_difference_fails_loudly(basin, tmp_path):
    claim = _claims(basin)["H4"]
    assert claim["status"] == "held", claim["reason"]
    assert claim["numbers"]["mismatched_tokens"] == 0 and claim["numbers"]["mismatched_topk"] == 0
    # the same check on a duplicate whose generation was altered: it fails and names where
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from audit.analyses import Settings
    from audit.basin import duplicate_check
    from audit.designs.routing import read_run

    altered = tmp_path / "greedy_dup"
    shutil.copytree(basin / "runs" / STUDY / "greedy_dup", altered)
    texts = pq.read_table(altered / "texts.parquet").to_pandas()
    first = texts["prompt_id"].iloc[0]
    ids = list(texts.at[0, "token_ids"])
    ids[2] = ids[2] + 1
    texts.at[0, "token_ids"] = ids
    pq.write_table(pa.Table.from_pandas(texts, preserve_index=False), altered / "texts.parquet")
    runs = {"greedy": read_run("greedy", basin / "runs" / STUDY / "greedy"), "greedy_dup": read_run("greedy_dup", altered)}
    out = duplicate_check(None, {"id": "D1", "kind": "duplicate_check", "runs": ["greedy", "greedy_dup"]}, runs.__getitem__,
                          Settings(alpha=0.05, n_resamples=99, exact_cap=0, seed=0))
    assert not out.primary_passed and out.quantities["mismatched_tokens"] == 1
    assert f"prompt {first} from generated token 2" in out.primary_text
    assert [w.code for w in out.warnings] == ["duplicate_differs"]


def test_report_shows_the_comparison_table(basin):
    html = (basin / "reports" / STUDY / "report.html").read_text()
    assert "Routing-basin comparison" in html
    n = _claims(basin)["H1"]["numbers"]
    assert f"{n['spearman_w']:.3f}" in html and "perturbed_tf" in html


# -- validation: the plan keeps variants apart unless compared ----------------------------------------------

def _plan(tmp_path, edit):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    study = copy_study(STUDY, repo)
    _edit_plan(study, edit)
    return study


def test_pooling_two_variants_is_refused_with_the_differing_field_named(tmp_path):
    def pool(spec):
        spec["runtime"]["runs"].append({"id": "perturbed_greedy", "decoding": "greedy", "variant": "perturbed"})
        spec["analyses"].append({"id": "R1", "kind": "reproduction", "unit": "L1E5", "metric": "W", "zone": "trimmed",
                                 "runs": ["greedy", "perturbed_greedy"], "groups": {"by": "prompt_class", "a": "FIRE", "b": "NOFIRE"},
                                 "tails": "greater"})
        spec["hypotheses"].append({"id": "H5", "claim": "The FIRE/NOFIRE separation of L1E5 is reproduced.", "direction": "greater",
                                   "kind": "exploratory", "analysis": "R1", "thresholds": ["alpha"]})

    with pytest.raises(SchemaError) as caught:
        load_study(_plan(tmp_path, pool))
    text = str(caught.value)
    assert "/analyses/4/runs" in text and "differ in /model/builtin/perturb:" in text and "does not pool model variants" in text


def test_teacher_forced_and_variant_references_are_checked(tmp_path):
    def bad(spec):
        spec["runtime"]["runs"][2]["source_run"] = "self_tf"          # a teacher-forced run re-reading itself
        spec["runtime"]["runs"][4]["variant"] = "tuned"               # an undeclared variant
        spec["analyses"][0]["runs"] = ["greedy", "greedy_dup"]        # a basin comparison on different tokens
        spec["analyses"][3]["runs"] = ["greedy", "perturbed_tf"]      # a duplicate of another variant

    with pytest.raises(SchemaError) as caught:
        load_study(_plan(tmp_path, bad))
    text = str(caught.value)
    assert "/runtime/runs/2/source_run" in text and "not another run" in text
    assert "/runtime/runs/4/variant" in text and "'tuned'" in text
    assert "/analyses/0/runs" in text and "teacher_forced, source_run: greedy" in text
    assert "/analyses/3/runs" in text and "which differ in /model/builtin/perturb: a duplicate_check" in text


def test_builtin_variant_options_are_deterministic_and_touch_only_the_routers_they_name():
    from capture.builtin import build_model, build_spec

    plant = {"layer": 1, "expert": 5, "tokens": ["feel", "calm"], "strength": 8.0}
    base = build_model(build_spec({"name": "tiny-qwen3_5-moe", "seed": 0, "plant": plant}))
    options = {"perturb": {"layers": [0, 2], "scale": 0.05, "seed": 7}, "rewire": {"expert": 2}}
    built = [build_model(build_spec({"name": "tiny-qwen3_5-moe", "seed": 0, "plant": plant, **options})) for _ in range(2)]
    one, two = (dict(m.state_dict()) for m in built)
    reference = dict(base.state_dict())
    routers = {f"model.layers.{i}.mlp.gate.weight" for i in range(4)}
    for name, tensor in reference.items():
        assert (one[name] == two[name]).all(), name                  # the same seeded build twice
        if name not in routers:
            assert (one[name] == tensor).all(), name                 # nothing but routers changes
    assert (one["model.layers.3.mlp.gate.weight"] == reference["model.layers.3.mlp.gate.weight"]).all()
    moved = one["model.layers.1.mlp.gate.weight"]
    assert (moved[2] == reference["model.layers.1.mlp.gate.weight"][5]).all()   # the planted row now routes expert 2
    assert (moved[5] == reference["model.layers.1.mlp.gate.weight"][2]).all()
    for layer in (0, 2):
        r0, r1 = reference[f"model.layers.{layer}.mlp.gate.weight"], one[f"model.layers.{layer}.mlp.gate.weight"]
        relative = ((r1 - r0).norm(dim=1) / r0.norm(dim=1)).numpy()
        np.testing.assert_allclose(relative, 0.05, rtol=1e-4)      # noise of 5% of each row's norm


def test_a_teacher_forced_run_before_its_source_is_refused_with_the_order(tmp_path):
    # --run self_tf alone (or its shard) before run greedy is captured: one message naming the source and how
    # to order shards, a non-zero exit, and no run folder left behind for the forced run
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study(STUDY, repo)
    commit_all(repo, "add basin study")
    assert invoke("prereg", f"preregistrations/{STUDY}", cwd=repo).exit_code == 0
    commit_all(repo, "freeze")
    result = invoke("capture", f"preregistrations/{STUDY}", "--run", "self_tf", "--no-progress", cwd=repo)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "re-reads the texts of run 'greedy', which is not captured yet" in result.output
    assert "--run greedy` first" in result.output and "merge the source run's shards" in result.output
    assert not (repo / "runs" / STUDY / "self_tf" / "manifest.json").exists()
