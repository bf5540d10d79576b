"""The engine: split -> assign -> run -> sync -> merge, independent of any backend.

Modules: ``task`` (the task model), ``options`` (RunOptions), ``chunking`` (split), ``scheduler``
(assign/run/sync with backpressure and retries), ``merge`` (ordered reassembly), ``events`` (the
event log), ``progress``, ``seeding``, ``execute`` (the per-item loop backends share), ``api``
(map/imap/map_reduce) and ``pool`` (the Executor).
"""
