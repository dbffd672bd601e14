"""The built-in toy world (``world.py``), its hidden gold utility (``gold.py``), simulated annotators
(``annotators.py``, ``feedback.py``), data files for the stages (``data.py``), rewards for learning tests
(``rewards.py``) and the demo's evaluation (``evaluation.py``).

It stays at the edge of the package: it writes ordinary data files and passes them to the stages; no core
layer (data, models, rollout, losses, train) imports it.
"""
