"""The old `BaseTrainer` hook contract as a view over `fit`, and migration of old trainers."""
