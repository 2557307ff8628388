"""Plain nn.Modules of the paper and the masking core; nothing here knows about tasks or sweeps."""
