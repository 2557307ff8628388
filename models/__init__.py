"""Plain nn.Modules of the paper and the masking core; nothing here knows about tasks or sweeps.

Model families register themselves (`@register_model` in models.registry); the registry finds every
module of this folder, and plug-in packages through the entry-point group "modular_masks.models".
Nothing is imported here, so that `models.common` costs no torch import.
"""
