"""armo: interpretable multi-objective reward models (ArmoRM-MoE) from the command line."""

__version__ = "0.1.0"
