"""Images: the Image record with LPS geometry; DICOM, DICOMweb, NIfTI and picture files; rendering."""
