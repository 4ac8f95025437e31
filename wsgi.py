"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""

from app import create_app
from core.config import get_settings

app = create_app(get_settings())
