"""Text-to-image side of rrf-audit: model pairing, Algorithm-2 generation, the data store, evaluation,
the HTML report and the ``rrf-audit`` command line."""
