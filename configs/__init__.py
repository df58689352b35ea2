"""Recipe configs: one `get_config()` per recipe; `default.py` documents every field."""
