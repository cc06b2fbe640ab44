"""`kerassl benchmark`: methods and baselines compared on the same splits, resumably.

- `definition.py`: a benchmark definition (YAML and flags) → a checked `Definition` and
  its record (TensorFlow-free).
- `rerun.py`: what a re-run may change against a directory's recorded definition.
- `cells.py`: the cells of a definition (pretraining, evaluation, search, baseline), their
  stored results under `cells/`, the progress line and the time estimate (TensorFlow-free).
- `stages.py`: what each kind of cell runs (TensorFlow).
- `runner.py`: a whole benchmark: the cells in order, skipping finished ones, then the
  outputs.
- `tables.py`: results.csv and results.md; `plots.py`: the PNGs; `machine.py`: what the
  benchmark ran on.
"""
