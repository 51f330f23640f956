#!/usr/bin/env python
"""How far the reduced-level JPEG 2000 decoding is from the full decode: max and mean absolute grey-level difference
of the 8-bit PNG images (same file, same --size, ``detx.data.dicom.load_dicom_image`` with and without the reduced
level), on pydicom-data's real radiographs (RG1 chest, RG3 lower leg; lossless J2KR and lossy J2KI) and on synthetic
Kaggle-like 12-bit MONOCHROME1 J2K images (``bench_dicom.make_j2k_dicoms``).

    python benchmarks/j2k_difference.py [--sizes 256 512 1024] [--synthetic 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--synthetic", type=int, default=4)
    args = ap.parse_args()
    import numpy as np
    import pydicom.data
    from bench_dicom import make_j2k_dicoms

    import detx.data.dicom as dicom

    reduced = dicom._reduced_j2k_pixels
    files = [Path(pydicom.data.get_testdata_file(n, download=False))
             for n in ("RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm")]
    with tempfile.TemporaryDirectory() as tmp:
        files += make_j2k_dicoms(Path(tmp), args.synthetic) if args.synthetic else []
        print("| file | size px | --size | level decoded | max diff | mean diff |")
        print("|---|---|---|---|---|---|")
        for f in files:
            for size in args.sizes:
                ds = pydicom.dcmread(f)
                level = reduced(ds, size)
                a, w, h = dicom.load_dicom_image(f, size)
                dicom._reduced_j2k_pixels = lambda ds, size: None
                try:
                    b = dicom.load_dicom_image(f, size)[0]
                finally:
                    dicom._reduced_j2k_pixels = reduced
                d = np.abs(a.astype(int) - b.astype(int))
                lv = "full" if level is None else f"{level.shape[1]}x{level.shape[0]}"
                print(f"| {f.name} | {w}x{h} | {size} | {lv} | {d.max()} | {d.mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
