#!/usr/bin/env bash
# Discovery to confirmation, as a researcher runs it: `make demo-discovery` (planted models) and
# `make demo-trained` (models trained here, tools/train_demo.py).
#
#   tools/demo_discovery.sh planted   the planted head (demo-discover) and its null twin, then the routing
#                                     scan of the planted demo study (demo)
#   tools/demo_discovery.sh trained   the trained dense model (demo-trained-heads) and the trained MoE
#                                     (demo-trained-moe): units nobody chose by hand
#
# The flow runs in a scratch git repository of its own (runs/demo-<which>/, redrawn each time), so that
# every freeze is committed as a researcher would commit it and `lockstep verify` checks real commits,
# without touching your repository. For each discovery study: freeze it, discover on its discovery split,
# propose a confirmatory study from the ranking, freeze that, capture, label (routing) and audit it on
# the heldout split, and verify it.
set -euo pipefail
which="${1:-planted}"
here="$(cd "$(dirname "$0")/.." && pwd)"
lockstep="$here/.venv/bin/lockstep"
ABLATION_SETS=(--set min_mean_drop_logits=1.5 --set min_specificity_ratio=5 --set control_drop_floor_logits=0.05
               --set max_target_rank=1)
ROUTING_SETS=(--set min_ratio=2 --set min_cohen_d=0.8 --set max_target_rank=1 --set reproduction_ratio_tolerance=1)
case "$which" in
  planted) studies=(demo-discover demo-discover-null demo); work="$here/runs/demo-discovery" ;;
  trained) studies=(demo-trained-heads demo-trained-moe); work="$here/runs/demo-trained" ;;
  *) echo "usage: $0 planted|trained" >&2; exit 2 ;;
esac
rm -rf "$work"
for study in "${studies[@]}"; do
  mkdir -p "$work/preregistrations/$study"
  cp "$here"/preregistrations/$study/{study.yaml,prompts.jsonl,rubric.yaml,thresholds.yaml} "$work/preregistrations/$study/"
done
ln -s "$here/models" "$work/models"  # the trained demo models, where their studies' model.path says
cd "$work"
commit() { git add -A && git -c user.name=lockstep-demo -c user.email=demo@lockstep.invalid commit -qm "$1"; }
git init -q && commit "Plan the discovery studies"

flow() {  # flow STUDY CONFIRM DESIGN
  local study="$1" confirm="$2" design="$3"
  echo "== $study -> $confirm"
  "$lockstep" prereg "preregistrations/$study" | sed -n 1p
  commit "Freeze $study"
  "$lockstep" discover "preregistrations/$study" --no-progress
  if [ "$design" = ablation ]; then
    "$lockstep" propose "preregistrations/$study" --out "preregistrations/$confirm" "${ABLATION_SETS[@]}"
  else
    "$lockstep" propose "preregistrations/$study" --out "preregistrations/$confirm" "${ROUTING_SETS[@]}"
  fi
  commit "Propose $confirm from the discovery of $study"
  "$lockstep" prereg "preregistrations/$confirm" | sed -n 1p
  commit "Freeze $confirm"
  "$lockstep" capture "preregistrations/$confirm" --no-progress
  if [ "$design" = routing ]; then "$lockstep" label "preregistrations/$confirm"; fi
  "$lockstep" audit "preregistrations/$confirm"
  "$lockstep" verify "preregistrations/$confirm" | grep -E "verify_discovery|^verify:"
}

if [ "$which" = planted ]; then
  flow demo-discover demo-confirm ablation
  flow demo-discover-null demo-confirm-null ablation
  flow demo demo-scan-confirm routing
else
  flow demo-trained-heads demo-trained-heads-confirm ablation
  flow demo-trained-moe demo-trained-moe-confirm routing
fi
echo "demo done: the scratch repository is $work (reports under $work/reports/)"
