"""Settings: typed configs, their per-field rules, and the command lines derived from them."""
