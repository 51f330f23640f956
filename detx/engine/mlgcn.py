"""ML-GCN: a multi-label head that learns from the label co-occurrence graph (Chen, Wei, Wang, Guo, "Multi-Label
Image Recognition with Graph Convolutional Networks", CVPR 2019), for ``DetxClassifier``
(``MODEL.CLASSIFIER.HEAD: "mlgcn"``; the default ``"linear"`` is one linear layer).

Each output (``abnormal`` and the K classes) is a node of a graph. From the training set's binary label matrix
``Y`` (N images x L outputs), :func:`mlgcn_adjacency` builds the paper's correlation matrix:

1. conditional probabilities ``P[i, j] = P(L_j | L_i) = M[i, j] / N_i`` (``M`` the co-occurrence counts, ``N_i`` the
   images with label i; a label never seen has a zero row);
2. binarized at ``tau``: ``A[i, j] = 1 if P[i, j] >= tau`` (i != j; the diagonal is set in 3);
3. re-weighted with ``p`` (the paper's eq. 8): ``A'[i, j] = p * A[i, j] / sum_{k != i} A[i, k]`` for i != j and
   ``A'[i, i] = 1 - p`` (a node without neighbours keeps ``A'[i, i] = 1 - p`` alone);
4. normalized as in the authors' code (``gen_adj``) and Kipf & Welling's GCN: ``D^-1/2 A'^T D^-1/2`` with ``D`` the
   row sums of ``A'``, read as ``Â[i, j] = A'[j, i] / sqrt(d_i d_j)``.

:class:`MLGCNHead` turns node features (one-hot, or label embeddings from a ``.npy`` file) through two graph
convolutions ``H1 = LeakyReLU(Â X W0)``, ``W = Â H1 W1`` into one classifier vector per output, and scores an image
by ``logits = pooled_feature @ W^T``. The adjacency is a buffer saved in the checkpoint, computed from the training
labels when the model is built for training.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["MLGCNHead", "conditional_cooccurrence", "mlgcn_adjacency", "normalize_adjacency"]


def conditional_cooccurrence(labels: np.ndarray) -> np.ndarray:
    """``P[i, j] = P(L_j | L_i)`` over the rows of a binary (N, L) label matrix (0 where label i never occurs); the
    diagonal is 1 for every label that occurs."""
    y = (np.asarray(labels, dtype=np.float64) > 0).astype(np.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be an (N, L) matrix, got shape {y.shape}")
    m = y.T @ y
    n = np.diag(m).copy()
    return np.divide(m, n[:, None], out=np.zeros_like(m), where=n[:, None] > 0)


def mlgcn_adjacency(labels: np.ndarray, tau: float = 0.4, p: float = 0.2) -> np.ndarray:
    """The re-weighted, binarized correlation matrix ``A'`` of the paper (steps 1-3 of the module docstring).

    Args:
        labels: (N, L) 0/1 training labels.
        tau: binarization threshold of P(L_j | L_i) (the paper: 0.4).
        p: the weight given to the neighbours (the paper: 0.2); the node keeps 1 - p.
    """
    if not 0.0 <= tau <= 1.0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"ML-GCN needs 0 <= tau <= 1 and 0 <= p <= 1, got tau={tau}, p={p}")
    cond = conditional_cooccurrence(labels)
    a = (cond >= tau).astype(np.float64) * (cond > 0)
    np.fill_diagonal(a, 0.0)
    deg = a.sum(axis=1, keepdims=True)
    out = np.divide(p * a, deg, out=np.zeros_like(a), where=deg > 0)
    np.fill_diagonal(out, 1.0 - p)
    return out


def normalize_adjacency(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``D^-1/2 A^T D^-1/2`` with ``D`` the row sums of ``A`` (the authors' ``gen_adj``); zero rows stay zero."""
    a = torch.as_tensor(a, dtype=torch.float32)
    d = a.sum(dim=1)
    inv = torch.where(d > 0, d.clamp(min=1e-12).pow(-0.5), torch.zeros_like(d))
    return inv[:, None] * a.t() * inv[None, :]


class MLGCNHead(nn.Module):
    """Two graph convolutions over the label graph produce one classifier per output (see the module docstring).

    Args:
        in_channels: the pooled image feature's size (the second layer's output size).
        num_outputs: nodes (``abnormal`` + K classes).
        adjacency: ``A'`` (num_outputs x num_outputs) from :func:`mlgcn_adjacency`; None: the identity (the buffer is
            then expected from a checkpoint).
        embeddings: (num_outputs, D) node features; None: one-hot.
        hidden: the first layer's width (the paper: 1024).
    """

    def __init__(self, in_channels: int, num_outputs: int, adjacency: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None, hidden: int = 1024):
        super().__init__()
        a = np.eye(num_outputs) if adjacency is None else np.asarray(adjacency, dtype=np.float64)
        if a.shape != (num_outputs, num_outputs):
            raise ValueError(f"ML-GCN adjacency of shape {a.shape} for {num_outputs} outputs")
        x = np.eye(num_outputs) if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != num_outputs:
            raise ValueError(f"ML-GCN label embeddings of shape {x.shape}: expected ({num_outputs}, D)")
        self.register_buffer("adjacency", torch.as_tensor(a, dtype=torch.float32))
        self.register_buffer("node_features", torch.as_tensor(x, dtype=torch.float32))
        self.gc1 = nn.Linear(x.shape[1], hidden, bias=False)
        self.gc2 = nn.Linear(hidden, in_channels, bias=False)
        self.act = nn.LeakyReLU(0.2)
        self.num_outputs = num_outputs

    def classifiers(self) -> torch.Tensor:
        """(num_outputs, in_channels): one classifier vector per output."""
        adj = normalize_adjacency(self.adjacency)
        h = self.act(adj @ self.gc1(self.node_features))
        return adj @ self.gc2(h)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.classifiers().t()


def training_labels(cfg) -> np.ndarray | None:
    """The (N, 1 + K) image-level targets of ``cfg.DATASETS.TRAIN`` (as the mapper feeds them), or None when a
    training dataset is not registered (a model built for prediction: its adjacency comes from the checkpoint)."""
    from detectron2.data import DatasetCatalog

    from detx.core.prepared import has_image_labels, image_level_targets

    names = list(cfg.DATASETS.TRAIN)
    if not names or any(n not in DatasetCatalog.list() for n in names):
        return None
    k = int(cfg.MODEL.CLASSIFIER.NUM_CLASSES)
    label_names = list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS) or None
    rows = [image_level_targets(d, k, label_names) for n in names for d in DatasetCatalog.get(n) if has_image_labels(d)]
    return np.stack(rows) if rows else None


def build_mlgcn_head(cfg, in_channels: int, num_outputs: int) -> MLGCNHead:
    """``MODEL.CLASSIFIER.HEAD: "mlgcn"``: the adjacency from the training labels (``MODEL.CLASSIFIER.MLGCN.TAU``,
    ``.P``), node features one-hot or ``.EMBEDDINGS`` (a ``.npy`` of shape (1 + K, D)), ``.HIDDEN`` wide."""
    g = cfg.MODEL.CLASSIFIER.MLGCN
    labels = training_labels(cfg)
    adjacency = None
    if labels is not None:
        adjacency = mlgcn_adjacency(labels, float(g.TAU), float(g.P))
        logger.info("ML-GCN adjacency from %d training images: %d edges over %d outputs (tau %.2f, p %.2f)",
                    len(labels), int((adjacency > 0).sum() - num_outputs), num_outputs, g.TAU, g.P)
    else:
        logger.info("ML-GCN: no training dataset registered; the adjacency is loaded with the weights")
    embeddings = np.load(g.EMBEDDINGS) if g.EMBEDDINGS else None
    return MLGCNHead(in_channels, num_outputs, adjacency, embeddings, int(g.HIDDEN))
