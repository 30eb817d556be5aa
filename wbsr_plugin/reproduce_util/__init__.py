"""Library behind ``python -m wbsr_plugin.reproduce``: presets, rows and option files, training runs side by
side (``jobs``), the time-budget probe and plan, evaluation, report."""
