# Temporary: removed once every caller imports jaxdd.runs.
"""The names of :mod:`jaxdd.runs` that the command line still reads here."""
from jaxdd.runs.final_table import final
from jaxdd.runs.knobs import knob_grid, settings_from_selection
from jaxdd.runs.selection import tune

__all__ = ["final", "knob_grid", "settings_from_selection", "tune"]
