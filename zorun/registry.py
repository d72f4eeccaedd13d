"""Name -> class for estimators and samplers, and the combinations that make no sense."""

from __future__ import annotations

from typing import Dict, Type

from omegaconf import DictConfig

from zorun.config import ConfigError
from zorun.estimators.zo_adam import ZOAdam
from zorun.estimators.base import Estimator
from zorun.estimators.first_order import FOAdam, FOSGD
from zorun.estimators.hizoo import HiZOO
from zorun.estimators.lozo import LOZO, LOZOM
from zorun.estimators.mezo import MeZO
from zorun.estimators.zo_sgd_momentum import ZOMomentum
from zorun.estimators.zo_sign import ZOSign
from zorun.samplers.adalezo import AdaLeZOSampler
from zorun.samplers.base import Sampler
from zorun.samplers.ldsd import LDSDSampler
from zorun.samplers.pertnn import PertNNSampler
from zorun.samplers.uniform import UniformSampler

ESTIMATORS: Dict[str, Type[Estimator]] = {
    cls.name: cls for cls in (MeZO, ZOMomentum, ZOSign, ZOAdam, HiZOO, LOZO, LOZOM, FOSGD, FOAdam)
}
SAMPLERS: Dict[str, Type[Sampler]] = {"uniform": UniformSampler, "adalezo": AdaLeZOSampler, "ldsd": LDSDSampler,
                                     "pertnn": PertNNSampler}
# Samplers whose Plan is every block at scale 1 and weight 1: the only ones a first-order
# (gradient) estimator can honour, since it has no direction distribution to shape.
GRADIENT_SAMPLERS = {"uniform"}


def check_combination(cfg: DictConfig) -> None:
    """Refuse, before any model loads, what cannot run or means nothing."""
    est, sampler = cfg.estimator.name, cfg.sampler.name
    if est not in ESTIMATORS:
        raise ConfigError(f"estimator.name={est} is not implemented; available: {', '.join(ESTIMATORS)}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler.name={sampler} is not implemented; available: {', '.join(SAMPLERS)}")
    cls = ESTIMATORS[est]
    if cls.differentiable and sampler not in GRADIENT_SAMPLERS:
        raise ConfigError(f"estimator={est} uses exact gradients, so sampler={sampler}'s direction distribution "
                          f"means nothing to it; use sampler={' or '.join(sorted(GRADIENT_SAMPLERS))}, or a ZO estimator")
    if sampler == "pertnn" and not cfg.sampler.checkpoint:
        raise ConfigError("sampler=pertnn needs trained networks: sampler.checkpoint=PATH.safetensors "
                          "(from zorun-metatrain, or zorun-pertnn import of released ones)")
    if sampler == "ldsd":
        _check_ldsd(cfg, cls)
    cls.check(cfg.estimator)


def _check_ldsd(cfg: DictConfig, cls: Type[Estimator]) -> None:
    """LDSD's candidates and mean live in the kernels' directions, and its estimate is one two-sided probe."""
    est = cfg.estimator
    if not cls.kernel_directions:
        usable = ", ".join(n for n, c in ESTIMATORS.items() if c.kernel_directions)
        raise ConfigError(f"sampler=ldsd needs an estimator that probes along the kernels' Gaussian directions; "
                          f"estimator={est.name} does not, use one of {usable}")
    if est.one_sided:
        raise ConfigError("sampler=ldsd estimates two-sided along the best candidate; set estimator.one_sided=false")
    if est.q != 1:
        raise ConfigError(f"sampler=ldsd makes one estimate per step along the best of sampler.k candidates; "
                          f"set estimator.q=1 (got {est.q}), or raise sampler.k")


def build_estimator(cfg: DictConfig, space) -> Estimator:
    return ESTIMATORS[cfg.estimator.name](cfg.estimator, space)


def build_sampler(cfg: DictConfig, space, seed: int) -> Sampler:
    return SAMPLERS[cfg.sampler.name](cfg.sampler, space, seed)
