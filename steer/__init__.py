"""steer: local weights, LoRA and steering vectors as one dynamic weight update.

h_out = (W + m·ΔW)·h + (b + m·Δb) at one layer; train Δ, sweep m, measure preference and utility
log-odds, fit validity-decay curves, judge generations. Library modules take plain arguments;
only ``steer.stages`` reads the Hydra config.
"""

__version__ = "0.1.0"
