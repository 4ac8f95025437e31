"""Celery app, the fulfilment pipeline, beat jobs and dead letters."""
