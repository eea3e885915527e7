"""Framework adapters: thin layers that wire the core's equations into a model.

- :mod:`elta_core.adapters.torch`: ``ELTAWrapper`` for any ``torch.nn.Module``,
  self-training with APDS, DDP.

Each adapter imports its framework; the core never does.
"""
