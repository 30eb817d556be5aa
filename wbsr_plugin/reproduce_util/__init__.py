"""Library behind ``python -m wbsr_plugin.reproduce``: presets, option files, evaluation, report."""
