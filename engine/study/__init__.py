"""Many runs as one experiment: the specification, the trial store, workers, statistics and
the report (DESIGN.md 7)."""
