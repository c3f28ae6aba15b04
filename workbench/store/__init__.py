"""Storage: the SQLite ``window_stats`` store and the DuckLake anomaly lakehouse.

Import from the modules: :mod:`workbench.store.window_stats`, :mod:`workbench.store.lakehouse`
(errors in :mod:`workbench.store.exceptions`). Nothing is imported here so that importing one store
does not load the other's dependencies.
"""
