"""What the model library (:mod:`corrseg3d`) and the engine (:mod:`pipeline`) share.

* :mod:`emcore.conventions` -- axis order, offsets, the uint8 affinity codec, the input scale and
  fragment ids; a leaf module.
* :mod:`emcore.store`, :mod:`emcore.precomputed` -- zarr / OME-Zarr / Neuroglancer precomputed volumes.
* :mod:`emcore.blocks` -- the one block runner: grid, task split, done records, schedulers, map-reduce.
* :mod:`emcore.mws`, :mod:`emcore.mws_uint8` -- mutex watershed on affinities in this convention.
* :mod:`emcore.contingency`, :mod:`emcore.metrics` -- exact blockwise VOI and adapted Rand error.
"""
