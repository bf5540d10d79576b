"""See inside a running job: a live dashboard and a profiler that follows the workers.

- ``sampler.py``: the worker side of the profiler (standard library only: workers import it).
- ``profile.py``: the caller side: a session, merging per function, speedscope export.
- ``flamegraph.py``: the flame graph and tables the HTML run report embeds.
- ``dashboard.py`` (+ ``static/``): the live page, served on 127.0.0.1 behind a random token.
- ``runs.py``: where the engine's calls hand things in when ``profile=``/``dashboard=`` is on.

Nothing here is imported unless one of them is asked for.
"""
