"""Ready-made pipelines that chain several stages on a real model; each is ``run(cfg) -> run folder``.

rlhfkit demo --preset smollm2-harmless          # rlhfkit.presets.smollm2_harmless
"""

PRESETS = {"smollm2-harmless": "rlhfkit.presets.smollm2_harmless"}
