"""``make bench``: the performance harness of issue 8 (see DESIGN.md §6).

Not part of ``make test`` and not run in CI. ``python -m bench [--quick] [--cases a,b]
[--runs N]`` generates its inputs (:mod:`bench.images`, cached under ``.bench/``),
times this tool against GNU tar and umoci side by side (:mod:`bench.run`), prints one
table and writes ``bench/results.json``.
"""
