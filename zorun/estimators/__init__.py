"""The estimators: a step's forward passes and update rule, ZO (through zorun.kernels) and first-order baselines.

Importing the package imports every module in it, so each estimator adds
itself to :data:`zorun.estimators.base.ESTIMATORS` (and its schema to Hydra's
ConfigStore): a new estimator is one module here plus one YAML in conf/estimator/.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
