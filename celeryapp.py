"""The Celery processes' entry point, as wsgi.py is the API's:
`celery -A celeryapp worker|beat|flower`. The app comes from the composition root on
this process's Settings (read from the environment once, here) and is the process's
default app, so Celery's signal handlers (tasks.celery_app) find it.
"""

from bootstrap import bootstrap

app = bootstrap().celery
app.set_default()
app.set_current()
