"""capture: run a frozen study's model and store what its design measures (routing, ablation margins).

Public face: :func:`capture.run.run_capture` (library: one orchestrator for every design) and the
``lockstep capture`` command (:mod:`capture.cli`). Each design's per-run work is a module of
:mod:`capture.designs`; :mod:`capture.runtime` loads the model and checks the runtime against the plan;
:mod:`capture.store` holds the layout of a run folder, its resume and merge.
"""
