"""Studies: one file each, with its presets, its sweeps and (where it has its own) its recipe.

A recipe is a function TrialContext -> {table name: rows} that calls the generic components of
pipeline.stages and pipeline.evaluate in the order the paper's procedure needs. These files are
the only ones under pipeline/ that name tasks and model families. A new study is a new file here
(or a module of a plug-in package in the entry-point group "modular_masks.studies"): the
registries of pipeline.experiments find it; nothing is imported here.
"""
