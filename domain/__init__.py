"""Business rules in plain functions, shared by the API and the Celery tasks."""
