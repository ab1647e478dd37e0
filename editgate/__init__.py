"""editgate: a pytest regression suite for knowledge-edited language models.

The data flow, one module per step:

    EditRequest (edits.py) ─► Editor (editgate.editors) ─► WeightDelta (delta.py) ─► apply
        ─► AbilityRunner (runner.py) ─► per-item results (abilities/) ─► Gate (gate.py) ─► report
"""

__version__ = "0.1.0"
