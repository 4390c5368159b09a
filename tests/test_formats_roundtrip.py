"""A precomputed input goes through predict, segment and export to the same bits as the zarr path."""

import numpy as np
import pytest

from emcore.store import create_volume, open_volume
from pipeline.export import export_precomputed
from pipeline.predict import PredictError, PredictOptions, predict
from pipeline.segment import SegmentOptions, segment
from pipeline.synth import generate
from tests.test_predict import _tiny_checkpoint


def test_precomputed_input_gives_bitwise_the_zarr_result(tmp_path):
    raw, _ = generate((12, 64, 64), seed=5)
    zarr_path = str(tmp_path / "z.zarr")
    precomputed = f"precomputed://file://{tmp_path}/input/raw"
    create_volume(f"{zarr_path}/raw", raw.shape, np.uint8, chunks=(8, 32, 32), voxel_size=(30, 6, 6))[:] = raw
    layer = create_volume(precomputed, raw.shape, np.uint8, chunks=(8, 32, 32), voxel_size=(30, 6, 6))
    for z0 in range(0, raw.shape[0], 8):  # blockwise, chunk-aligned writes
        layer[z0:z0 + 8] = raw[z0:z0 + 8]
    _tiny_checkpoint(tmp_path / "m.pt")
    options = PredictOptions(checkpoint=str(tmp_path / "m.pt"), block=(8, 32, 32), halo=(4, 27, 27),
                             precision="fp32", device="cpu")
    with pytest.raises(PredictError, match="pass --out vol.zarr/affinities"):
        predict(precomputed, options=options, progress=False)
    from_pc = str(tmp_path / "p.zarr")
    predict(precomputed, out_location=f"{from_pc}/affinities", options=options, progress=False, scheduler="synchronous")
    predict(zarr_path, options=options, progress=False, scheduler="synchronous")
    np.testing.assert_array_equal(open_volume(f"{from_pc}/affinities")[:], open_volume(f"{zarr_path}/affinities")[:])
    for store in (zarr_path, from_pc):  # mutex watershed: its long-range repulsion splits a tiny model's affinities
        segment(store, SegmentOptions(method="mws"), progress=False, scheduler="synchronous")
    layers = export_precomputed(f"{from_pc}/segmentation", f"precomputed://file://{tmp_path}/out")
    exported = open_volume(layers["segmentation"])
    expected = open_volume(f"{zarr_path}/segmentation")[:]
    assert len(np.unique(expected)) > 3  # a real segmentation, not a constant
    assert exported.dtype == expected.dtype
    np.testing.assert_array_equal(exported[:], expected)
    assert exported.voxel_size == (30.0, 6.0, 6.0)
