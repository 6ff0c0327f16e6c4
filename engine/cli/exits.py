"""The exit codes of `python -m engine` (DESIGN.md 4)."""

EXIT_OK = 0        # done, early stopping included
EXIT_FAILED = 1    # training failed (a non-finite loss, recipe code raised)
EXIT_USER = 2      # a user error: one clear message per mistake, no traceback
EXIT_SIGNAL = 130  # stopped by SIGINT or SIGTERM after writing a resumable checkpoint
