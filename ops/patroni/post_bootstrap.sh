#!/bin/sh
# Patroni runs this once, on the first primary, with a connection URL as $1: the
# application's role and database (as the single-server `postgres` service has them).
set -e
psql "$1" -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE tutorflow LOGIN PASSWORD '${TUTORFLOW_DB_PASSWORD:-tutorflow}'" \
  -c "CREATE DATABASE tutorflow OWNER tutorflow"
