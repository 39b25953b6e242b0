"""Configuration presets (YAML), found by name wherever the package is installed: `--config tiny`."""
