"""The YAML configs the project ships (models, datasets, training schedules, app presets),
installed with the package as data: core/config_files.py finds them beside core/."""
