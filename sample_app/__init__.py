"""The sample shop: each of the ten tips broken on a ``/bad/...`` path and followed on its ``/good/...`` twin.

``main`` (the app), ``tips`` (the pairs, as data), ``load`` (scenario load), ``report`` (per-tip
summary of ``/metrics``), ``serve`` (gunicorn, a worker per core). See ``sample_app/README.md``.
"""
