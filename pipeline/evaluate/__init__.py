"""Scoring generators against real data: hand-made and learned features, metrics with
their real-vs-real baselines, the ``evaluate`` and ``promote`` commands."""
