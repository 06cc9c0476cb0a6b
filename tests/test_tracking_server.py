"""The tracking server on PostgreSQL under load (marker ``cluster``): 8 writer processes at once lose nothing;
the same load on a SQLite store is reported beside it."""

from __future__ import annotations

import json

import pytest

from cluster_parts import skip_without_parts, tracking_server
from tracking_load import client, load_test

pytestmark = pytest.mark.cluster

LOAD = {"processes": 8, "runs": 2, "batches": 5, "batch": 1000}  # 80,000 metric values in 80 log_batch calls


def test_eight_concurrent_writers_store_every_value_on_postgresql_and_sqlite_is_reported_beside(tmp_path):
    skip_without_parts(ray_needed=False)
    with tracking_server() as srv:
        postgres = load_test(srv.uri, srv.backend_uri, **LOAD)
    sqlite_uri = f"sqlite:///{tmp_path / 'load.db'}"
    client(sqlite_uri).search_experiments()  # creates the schema once, as the study's file lock does
    sqlite = load_test(sqlite_uri, sqlite_uri, **LOAD)
    print("\nload test:", json.dumps({"postgresql": postgres, "sqlite": sqlite}, indent=1))
    assert postgres["errors"] == 0 and postgres["error_kinds"] == []
    assert postgres["stored"] == postgres["values"] == 80_000
    # SQLite: whatever was not stored was reported as an error, never lost silently.
    assert sqlite["stored"] + sqlite["errors"] * LOAD["batch"] == sqlite["values"]
