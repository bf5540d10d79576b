"""The engine: split -> assign -> run -> sync -> merge, independent of any backend.

Modules: ``options`` (RunOptions), ``chunking`` (split), ``scheduler`` (assign/run/sync with
backpressure and retries), ``merge`` (ordered reassembly), ``events`` (the event log),
``progress``, ``api`` (map/imap/map_reduce) and ``pool`` (the Executor). The task model and what
runs inside a worker live one layer down, in ``forkjoin.core``, which every backend imports too.
"""
