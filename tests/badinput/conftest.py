"""The C-STORE corpus runs on the DIMSE tests' SQLite SCP fixtures."""

from tests.dimse.conftest import sqlite_medgate  # noqa: F401 - shared fixture
