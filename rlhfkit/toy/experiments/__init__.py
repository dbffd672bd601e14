"""Measurements on the toy world, each a command whose output is the figure it reports:

    python -m rlhfkit.toy.experiments.disagreement --seeds 0 1 2   # annotator-conditioned vs pooled reward models,
                                                                   # the hidden-context statistic, persona policies
    python -m rlhfkit.toy.experiments.thumbs --seeds 0 1 2         # KTO on thumbs only vs SFT, judged by gold
    python -m rlhfkit.toy.experiments.overoptimisation --seeds 0 1 2 3 4   # the monitor: stops and false alarms
    python -m rlhfkit.toy.experiments.mitigation --seeds 0 1 2 3 4         # penalised ensemble best-of-64
    python -m rlhfkit.toy.experiments.length_control --seeds 0 1 2 3 4     # LC win rate vs a verbose policy

Like the demo, they stand at the edge: the simulated annotators label, the stages train on the files they write,
and only the judging reads the gold (or a persona's) utility. The evaluation experiments (the last three)
share one demo per seed run with the monitor (``rlhfkit demo --seed S --monitor``), made when missing.
"""
