"""Human feedback collection: a FastAPI web app backed by SQLite or PostgreSQL.

Modules: ``app`` (HTTP), ``store`` (queue and labels), ``models`` + ``migrations`` (schema), ``auth``,
``questions`` (answer formats), ``quality`` (agreement statistics), ``dashboard``, ``active``
(next-item strategies and reward-model scorers), ``export`` (to ``rlhfkit.data`` files), ``generate``
(tasks from a model), ``cli`` (``rlhfkit annotate ...``). See docs/feedback.md.
"""
