"""What a run writes and reads: atomic files, checkpoints, the run directory, metrics.json,
plots, logs, the progress bar, the standard writers, trackers; recipes.toml and config layering.
`engine.io.fit.fit` is where the core loop and these writers meet."""
