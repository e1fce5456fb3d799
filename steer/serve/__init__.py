"""Serving trained runs: an OpenAI-compatible server where every request picks its run and its m.

``python -m steer.serve RUN_DIR ...`` (``__main__``) loads the base model once and every run's Δ;
``engine`` decodes the requests of every run and m in one continuously batched loop; ``api`` is
the HTTP side (FastAPI); ``runs`` reads what the run directories say before anything loads.
"""
