"""detx: Detectron2-based detection of abnormalities on X-rays (VinDr-CXR, VinDr-SpineXR).

detectron2 itself is not on PyPI, so it is not listed here: `make install` (tools/install.sh)
installs it, upstream from GitHub when reachable, else the pure-Python build (README, DESIGN §4).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

install_requires = [
    "torch",  # pinned with torchvision in constraints.txt
    "torchvision",
    "numpy>=1.26",
    "pandas>=2.0",
    "scipy>=1.10",
    "scikit-learn>=1.3",
    "optuna>=3.5",  # tools/tune.py: hyperparameter search, resumable through its SQLite storage (heartbeat retries)
    "opencv-python-headless>=4.8",  # the only cv2 distribution: albumentations uses the same one
    "albumentations>=1.4",
    "pydicom>=2.4",
    "pylibjpeg>=2.0",
    "pylibjpeg-libjpeg>=2.1",
    "pylibjpeg-openjpeg>=2.3",
    "pylibjpeg-rle>=2.0",
    "python-gdcm>=3.0.22",
    "ensemble-boxes>=1.0.9",
    "numba>=0.58",  # detx's batched WBF (detx/core/wbf.py)
    "pycocotools>=2.0.7",  # mask RLE in the mapper; the reference COCOeval of the tests
    "faster-coco-eval>=1.8",  # COCO mAP (pycocotools' algorithm in C++): 15,000 images in seconds, not minutes
    "captum>=0.7",  # Grad-CAM / DeepLIFT / Integrated Gradients heatmaps of the image classifier
    "onnx>=1.16",  # tools/export.py --format onnx: the metadata written into the file
    "onnxruntime>=1.18",  # running exported ONNX files (tools/predict.py --exported)
    "matplotlib>=3.7",
    "tqdm>=4.60",
    "filelock>=3.12",  # one run at a time per output folder (detx/core/io.py folder_lock)
    "Pillow>=9.0",
    # detectron2's own runtime dependencies (it is installed with --no-deps in the pure-Python path)
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.11",
    "yacs>=0.1.8",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "tabulate",
    "termcolor>=1.1",
    "cloudpickle",
    "tensorboard",
    "packaging",
]

extras_require = {
    "dev": [
        "pytest>=7.4",
        "pytest-timeout>=2.2",
        "import-linter>=2.1",  # the one-way layers contract (pyproject.toml), run by `make test`
        "grimp>=3.0",
        "psutil>=5.9",  # finding a killed run's worker processes in the tests  # import graph of tests/test_architecture.py (import-linter's own engine)
        "ruff>=0.5",
        "nbclient>=0.9",
        "iterative-stratification>=0.1.7",  # reference for the fold stratifier tests
        "nbformat>=5.9",
        "ipykernel>=6.25",
        # real data that installs from the package index (DESIGN 4b), read by tests from the installed package:
        "torchxrayvision>=1.2",  # the real Kaggle VinBigData train.csv, Open-i reports, NIH / RSNA boxes
        "pydicom-data>=1.0",  # real computed radiographs (RG1_*, RG3_*), uncompressed and JPEG 2000
        "faster-coco-eval>=1.6",  # a second COCO mAP implementation to check detx's against
        "mkdocs>=1.6",  # the documentation site (`make docs`; built strictly by tests/test_docs.py)
        "mkdocstrings[python]>=0.26",  # its API reference from the docstrings
    ],
}

setup(
    name="detx",
    version="0.1.0",
    description="Detectron2 toolkit for abnormality detection on chest and spine X-rays (VinDr-CXR, VinDr-SpineXR)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["detx", "detx.*"]),
    install_requires=install_requires,
    extras_require=extras_require,
    include_package_data=True,
    # the real VinBigData annotation aggregates the synthetic generator draws from (tools/real_stats.py)
    package_data={"detx.synthetic": ["*.json"]},
    license="Apache-2.0",
)
