"""The only code that writes parameters in the ZO path.

perturb_:  θ_b += α·s_b·z_b                                  for every active block b
update_:   θ_b ← (1 − η·λ_b)·(θ_b + a·s_b·z_b) − c·w_b·s_b·z_b   restore and update in one pass

z_b is drawn from a generator keyed by (plan.seed, b), so the update
regenerates exactly the z of the perturbation and nothing is stored.
"""

from zorun.kernels.reference import perturb_, update_

__all__ = ["perturb_", "update_"]
