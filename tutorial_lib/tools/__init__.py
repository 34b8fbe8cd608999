"""The tooling around the tutorial: what runs it, measures it and scales it out, not what it teaches.

- :mod:`.runner`: the batch runner behind ``make demo`` (the ordered notebooks with papermill).
- :mod:`.cli`: the command line, ``python -m tutorial_lib ...``.
- :mod:`.bench` (with :mod:`.bench_accuracy` and :mod:`.bench_report`): the benchmarks behind ``make bench``.
- :mod:`.jobs`: long training jobs from the command line (plainly or under ``torchrun``).
- :mod:`.prepare`: the full datasets' Kaggle download and their one-off preparation into memory-mapped arrays.

The notebooks never import this package; it imports the teaching modules (``tutorial_lib.data``,
``tutorial_lib.train``, ...), never the other way round.
"""
