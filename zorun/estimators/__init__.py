"""ZO optimisers (and, later, first-order baselines): forward passes and update rules."""
