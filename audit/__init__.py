"""audit: label generated text with the frozen rubric, compute the preregistered analyses, decide every
claim, and write the ledger, run cards, tables and report; and the reviewer's chain checks.

Public face: the ``lockstep label``, ``audit`` and ``review`` commands (:mod:`audit.cli`),
:func:`audit.ledger.run_audit`, and :func:`audit.chain.verify_target` (the reviewer's one numbered
sequence: the freeze steps of :mod:`lockstep.verify`, then the chain steps). Each design's run reading,
analyses and evidence facts are a module of :mod:`audit.designs`.
"""
