"""The Ray view in the Airflow UI: a FastAPI app (``app``) and its charts, mounted by ``plugin``."""
