"""Keying: the compositor (mask to alpha to keyed frame), frame-accurate sync between frames and masks,
and the oracle that measures it against ground truth. Hands out Compositor, the key scheduler and the oracle run."""
