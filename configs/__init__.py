"""Recipe configs: one `get_config()` per recipe; `default.py` documents every field.

Not installed: recipes load by path (`--config=configs/x.py`); a recipe builds on another
with `facegan_jax.recipes.sibling(__file__, name)`. This file lets the tests import them.
"""
