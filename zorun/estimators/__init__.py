"""The estimators: a step's forward passes and update rule, ZO (through zorun.kernels) and first-order baselines."""
