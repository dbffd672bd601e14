"""Pipelines: short lists of stages run in one folder (``base.Pipeline``): the toy demo (``toy``) and the
real-model presets (``smollm2_harmless``), each ``run(cfg) -> run folder`` behind ``rlhfkit demo``."""
