"""Commands: argument parsing and one-line error reporting around the library, nothing else.

Each module is one command, run as `python -m facegan_jax.cli.<name>` or its console script
(`facegan-<name>`); `python -m facegan_jax.main/sample/fid/evaluate/benchmark/report` still work.
"""
