"""Measurements on the toy world, each a command whose output is the figure it reports:

    python -m rlhfkit.toy.experiments.disagreement --seeds 0 1 2   # annotator-conditioned vs pooled reward models,
                                                                   # the hidden-context statistic, persona policies
    python -m rlhfkit.toy.experiments.thumbs --seeds 0 1 2         # KTO on thumbs only vs SFT, judged by gold

Like the demo, they stand at the edge: the simulated annotators label, the stages train on the files they write,
and only the judging reads the gold (or a persona's) utility.
"""
