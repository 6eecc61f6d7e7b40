"""alignment: post-training recipes (SFT, DPO, ...) on top of TRL, from a YAML file to an aligned model."""

__version__ = "0.1.0"
