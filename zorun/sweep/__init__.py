"""A multirun's outputs: the Hydra callback, the report (tables, plots, dashboard) and time to target.

Importing the package loads none of them.
"""
