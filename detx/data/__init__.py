"""detx.data: the real-data stage: reader CSVs, DICOM discovery and decoding, reader fusion, folds, COCO writing."""
