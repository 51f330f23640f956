"""Class vocabularies of the supported datasets, and the "No finding" convention.

Class ids are 0-based indices into the dataset's list; they are also the COCO ``category_id`` of the
prepared JSON and the class ids of a submission. "No finding" is not a box category: it is the extra
id ``len(classes)`` (14 for VinDr-CXR, as in the Kaggle challenge; 7 for VinDr-SpineXR), scored in a
submission with the whole-image box ``0 0 1 1``.
"""

from __future__ import annotations

from detx.core.errors import InputError

NO_FINDING = "No finding"

# Kaggle VinBigData challenge, class_id 0-13 (train.csv); 14 = No finding.
VINDR_CXR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)

# PhysioNet VinDr-CXR 1.0.0: 22 local (box) labels, a superset of the Kaggle 14.
VINDR_CXR_LOCAL_LABELS: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)

# PhysioNet VinDr-CXR global (image-level only) labels. The two spellings of "Other disease(s)"
# occur in the train and test label files.
VINDR_CXR_GLOBAL_LABELS: tuple[str, ...] = (
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
)
GLOBAL_LABEL_ALIASES: dict[str, str] = {"Other disease": "Other diseases"}

# The Kaggle challenge folded the 8 rarer PhysioNet local labels into "Other lesion".
PHYSIONET_TO_KAGGLE: dict[str, str] = {
    name: (name if name in VINDR_CXR_CLASSES else "Other lesion") for name in VINDR_CXR_LOCAL_LABELS
}

# VinDr-SpineXR 1.0.0 detection classes (the dataset's own spelling, "Spondylolysthesis" included).
SPINEXR_CLASSES: tuple[str, ...] = (
    "Osteophytes",
    "Surgical implant",
    "Spondylolysthesis",
    "Foraminal stenosis",
    "Disc space narrowing",
    "Vertebral collapse",
    "Other lesions",
)

# MURA v1.1: musculoskeletal radiographs labelled normal/abnormal per study; no box classes.
MURA_BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST",
)

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "vindr-cxr": VINDR_CXR_CLASSES,
    "vindr-cxr-physionet": VINDR_CXR_LOCAL_LABELS,
    "spinexr": SPINEXR_CLASSES,
    "mura": (),
}


def classes_for(dataset: str) -> tuple[str, ...]:
    """Class names of ``dataset`` ("vindr-cxr", "vindr-cxr-physionet" or "spinexr")."""
    try:
        return DATASET_CLASSES[dataset]
    except KeyError:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_CLASSES)}") from None


def no_finding_id(classes: tuple[str, ...] | list[str]) -> int:
    """The class id of "No finding" for a vocabulary: one past the last box class."""
    return len(classes)
