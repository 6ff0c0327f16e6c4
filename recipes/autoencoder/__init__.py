"""autoencoder: compress vectors that describe pre-trained models, and reconstruct them.

The old project's ModelAutoEncoder as a recipe. Its data is a synthetic "model zoo": each
pre-trained model is described by a vector (think layer statistics) generated from a few hidden
factors through a fixed random non-linear map, plus noise; so there is low-rank structure to
learn, and the reconstruction error can fall far below the variance of the data.
"""

from recipes.autoencoder.recipe import recipe

__all__ = ["recipe"]
