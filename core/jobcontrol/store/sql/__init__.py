"""The store's SQL, one module per dialect, each defining the same statement names.

`sqlite` serves the SQLite and libSQL drivers, `postgres` the PostgreSQL one. The core
names a statement (`tx.sql.CLAIM_JOBS`) and each driver's `Tx` carries its dialect, so
one core runs on every engine; a test checks the two modules define the same names.
"""
