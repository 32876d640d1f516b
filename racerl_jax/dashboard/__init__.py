"""The live dashboard: ``python -m racerl_jax.dashboard RUN_DIR [RUN_DIR ...] [--port 8050]``.

``files`` reads files that are being written, ``data`` turns a run directory into what is drawn,
``figures`` draws it (Plotly figure dicts), ``app`` is the Dash page and its callbacks."""
