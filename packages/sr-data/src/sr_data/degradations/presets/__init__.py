"""Degradation presets (YAML) read by :func:`sr_data.degradations.load_degradation_settings`."""
