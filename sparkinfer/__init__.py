"""sparkinfer: seam-free, georeferenced deep-learning inference over large rasters on Spark."""

__version__ = "0.1.0"
