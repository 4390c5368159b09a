"""corrseg3d's blockwise engine over zarr and precomputed volumes.

Stages (each a ``python -m pipeline.NAME`` command): ``data`` (synthetic volumes, ingest),
``predict``, ``segment``, ``evaluate``. ``pipeline`` may import ``corrseg3d``; never the reverse.
"""
