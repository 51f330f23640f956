"""The built-in synthetic X-ray generator (a package of its own: it imports only ``detx.core``).

``python -m detx.synthetic --out DIR --dataset vindr-cxr --n-train 100 --n-test 20`` writes DICOMs and reader
CSVs in the exact VinBigData or VinDr-SpineXR layout; :func:`generate_dataset` and :func:`write_dicom` are the
Python entry points.
"""

from detx.synthetic.generator import generate_dataset, write_dicom

__all__ = ["generate_dataset", "write_dicom"]
