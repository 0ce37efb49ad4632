"""lockstep core: study loading and validation, freeze/amend, the journal, the gate, errors, the CLI."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
