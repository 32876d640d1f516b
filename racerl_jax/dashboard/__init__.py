"""The live dashboard: ``python -m racerl_jax.dashboard RUN_DIR [RUN_DIR ...] [--port 8050]``.

``files`` reads files that are being written; ``track`` and ``traces`` turn the track and the
driving into what is drawn; ``data`` keeps one run directory up to date; ``figures`` draws (Plotly
figure dicts); ``app`` is the Dash page and its callbacks; ``synthetic`` writes runs for the tests
and the load benchmark with the real writers."""
