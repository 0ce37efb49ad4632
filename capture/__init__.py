"""capture: run a frozen study's model, record what its routers did, store texts apart from routing.

Public face: :func:`capture.run.run_capture` (library) and the ``lockstep capture`` command
(:mod:`capture.cli`). See :mod:`capture.store` for the layout of a run folder.
"""
