"""Measurement: neural-collapse statistics of features and classifiers.

- `stats`: `ClassStats`, the streaming, mergeable class statistics, and the
  engine `class_moments` that makes them.
- `distributed`: `reduce_class_stats`, their exact combination across processes.
- `outofcore`: `stats_from_dask`, their tree reduction over Dask blocks.
- `metrics`: the NC metrics, as public kernels on a `ClassStats`.
- `report`: `nc_report`, every metric from one pass over the data.
- `vocabulary`, `verdict`: what each metric means, and a reading of a report
  against the theory.

Depends on `ncgeom._lib` and, for the comparison with the optimum,
`ncgeom.theory`.
"""
