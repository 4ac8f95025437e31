"""Application actions: one unit of work each, called by views, the CLI and tasks.

An action opens one transaction on a `Database`, calls domain functions (which only
write rows: state, events, outbox messages) and commits; the after-commit channel then
publishes what the transaction wrote. Nothing here touches Flask, Celery or Redis.
"""
