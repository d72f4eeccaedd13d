"""Option name -> class for estimators and samplers, and the combinations that make no sense.

Samplers register themselves (:func:`zorun.samplers.base.register`); this
module imports them all and asks each sampler which estimators it refuses.
"""

from __future__ import annotations

from typing import Dict, Type

from omegaconf import DictConfig

import zorun.samplers  # noqa: F401  (every sampler module registers itself)
from zorun.errors import ConfigError
from zorun.estimators.zo_adam import ZOAdam
from zorun.estimators.base import Estimator
from zorun.estimators.first_order import FOAdam, FOSGD
from zorun.estimators.hizoo import HiZOO
from zorun.estimators.lozo import LOZO, LOZOM
from zorun.estimators.mezo import MeZO
from zorun.estimators.zo_sgd_momentum import ZOMomentum
from zorun.estimators.zo_sign import ZOSign
from zorun.samplers.base import SAMPLERS, Sampler

ESTIMATORS: Dict[str, Type[Estimator]] = {
    cls.name: cls for cls in (MeZO, ZOMomentum, ZOSign, ZOAdam, HiZOO, LOZO, LOZOM, FOSGD, FOAdam)
}


def sampler_class(name: str) -> Type[Sampler]:
    if name not in SAMPLERS:
        raise ConfigError(f"sampler.name={name} is not implemented; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_combination(cfg: DictConfig) -> None:
    """Refuse, before any model loads, what cannot run or means nothing."""
    est = cfg.estimator.name
    if est not in ESTIMATORS:
        raise ConfigError(f"estimator.name={est} is not implemented; available: {', '.join(ESTIMATORS)}")
    sampler_class(cfg.sampler.name).refuse(cfg, ESTIMATORS)
    ESTIMATORS[est].check(cfg.estimator)


def build_estimator(cfg: DictConfig, space) -> Estimator:
    return ESTIMATORS[cfg.estimator.name](cfg.estimator, space)


def build_sampler(cfg: DictConfig, space, seed: int) -> Sampler:
    return SAMPLERS[cfg.sampler.name](cfg.sampler, space, seed)
