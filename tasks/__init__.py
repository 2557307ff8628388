"""Tasks, one module each, behind one registry (tasks.registry): a module registers its task with
`@register_task`, a dataset maker with `@register_dataset` (both in tasks.registry); the registries find
every module of this folder, and plug-in packages through the entry-point group
"modular_masks.tasks" (models.common.Registry). Nothing is imported here: importing a task module
does not import the others."""
