"""Concrete recipes, each with its model and data; registered in recipes.toml."""
