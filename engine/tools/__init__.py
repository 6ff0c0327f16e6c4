"""What runs around a run: check, diagnose, lr-find, new (and its templates), runs, compare."""
