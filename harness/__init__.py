"""Development harness, not part of the service: starting and stopping the processes that
tests, benchmarks and the soak run against (workers, gunicorn, Flower, private Redis and
PostgreSQL servers), finding free ports, and waiting for readiness by a signal."""
