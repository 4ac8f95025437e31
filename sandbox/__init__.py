"""A local stand-in for the payment provider: the subset of Stripe's REST API that
Tutorflow uses, with Stripe's JSON shapes, error format and signed webhooks.

Run it with `python -m sandbox` (make up does). It is a real HTTP server: the app talks
to it through the official `stripe` library (`STRIPE_API_BASE`), and it calls the app's
webhook endpoint like Stripe does. Tests tell it to be slow or to fail with 500s through
`POST /_sandbox/mode`, and stop its process to make it unreachable.
"""
