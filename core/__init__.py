"""The ground floor: the model contract every stage shares — sidecar schema and files, model
config, the CPU preprocess and overlay references, errors, atomic writes, YAML. It imports no
other package of this project (tests/test_layout.py holds it to that)."""
