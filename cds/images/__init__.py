"""Images: one :class:`~cds.images.image.Image` record (pixels + LPS geometry) from wherever pixels are kept.

Modules, each importing only those above it (no cycles; ``tests/test_import_graph.py`` checks):

- :mod:`cds.images.image` — the Image record, voxel index <-> LPS geometry, direction checks
- :mod:`cds.images.limits` — what a reader may open (regular files under a root; never a FIFO or device)
  and the pixel budget checked from headers before decoding (``CDS_MAX_IMAGE_BYTES``, ``CDS_MAX_SERIES_BYTES``)
- :mod:`cds.images.dicom_header` — a DICOM pixel description checked (and its claimed size) before decoding
- :mod:`cds.images.dicom_image` — pydicom datasets of one series -> Image (decode, rescale, stack)
- :mod:`cds.images.dicom` — DICOM files and series folders; "is this the series asked for" checks
- :mod:`cds.images.dicomweb` — QIDO-RS / WADO-RS / STOW-RS client
- :mod:`cds.images.nifti`, :mod:`cds.images.pictures` — NIfTI, PNG/JPEG
- :mod:`cds.images.read` — ``read_image(location, series_uid=None, modality=None, *, root=None, max_bytes=None)``:
  any of the above
- :mod:`cds.images.render` — windowing, overlays, PNG rendering
"""
