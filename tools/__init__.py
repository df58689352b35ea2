"""The wall-clock comparison harness (race, ablate): our recipe against the PyTorch peer.

Outside the library: run from a checkout (`python -m tools.race ...`); paths to the peers are
flags (defaults: the `../shared` folder beside the checkout, or `FACEGAN_SHARED`).
"""
