"""Serving trained runs: an OpenAI-compatible server where every request picks its runs and their m.

``python -m steer.serve RUN_DIR ...`` (``__main__``) loads the base model once and every run's Δ;
``engine`` decodes the requests of every run and m in one continuously batched loop (over
``steer.core.decode.DecodeBatch``, as ``steer.core.generate`` does); ``api`` is
the HTTP side (FastAPI); ``runs`` reads what the run directories say before anything loads.
"""
