"""lockstep core: study loading and validation, the design records, freeze/amend, the journal, the gate,
the lock check, errors and the vocabulary of artifacts.

``lockstep.cli`` is the top floor, above the stages: it imports every stage package, and nothing in the
core or a stage imports it (``tools/layers.py`` checks the layering).
"""

__version__ = "0.1.0"
