"""AdaLeZO's log readers, here for report.py and dashboard.py only: delete this module once they call
``Sampler.plot_log`` and import ``read_probabilities`` from :mod:`zorun.samplers.adalezo`."""

from zorun.samplers.adalezo import plot_layer_probabilities, read_probabilities

__all__ = ["plot_layer_probabilities", "read_probabilities"]
