"""The loop and what it decides: Recipe, the loop state, the loop, events, TrainConfig and its
ranges, optimizers and schedules, devices, distributed, signals, errors. Writes and reads no
file: what a run writes is `engine.io`'s."""
