"""Direction distributions: which blocks are active, their scales and update weights.

Importing the package imports every module in it, so each sampler adds itself
to :data:`zorun.samplers.base.SAMPLERS` (and its schema to Hydra's ConfigStore):
a new sampler is one module here plus one YAML in conf/sampler/.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
