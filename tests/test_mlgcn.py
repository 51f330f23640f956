"""ML-GCN head: the adjacency against a hand computation, the graph convolutions against numpy, and the wiring into
DetxClassifier (adjacency from the registered training labels, kept in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detx.engine.mlgcn import MLGCNHead, conditional_cooccurrence, mlgcn_adjacency, normalize_adjacency

CLS_TINY = str(Path(__file__).resolve().parents[1] / "configs/quick_schedules/vindr_cxr_cls_tiny.yaml")

# 5 images x 4 labels; label 3 never occurs
Y = np.array([[1, 1, 0, 0],
              [1, 0, 0, 0],
              [1, 1, 1, 0],
              [0, 1, 1, 0],
              [1, 0, 0, 0]])


def test_adjacency_by_hand():
    # counts N = [4, 3, 2, 0]; co-occurrences M01 = 2 (rows 0, 2), M02 = 1 (row 2), M12 = 2 (rows 2, 3)
    p_cond = np.array([[1, 2 / 4, 1 / 4, 0],
                       [2 / 3, 1, 2 / 3, 0],
                       [1 / 2, 2 / 2, 1, 0],
                       [0, 0, 0, 0]])
    np.testing.assert_allclose(conditional_cooccurrence(Y), p_cond)
    # tau 0.4 keeps 0->1 (0.5), 1->0 and 1->2 (0.67), 2->0 (0.5) and 2->1 (1.0); p 0.2 shared among the neighbours
    want = np.array([[0.8, 0.2, 0.0, 0.0],
                     [0.1, 0.8, 0.1, 0.0],
                     [0.1, 0.1, 0.8, 0.0],
                     [0.0, 0.0, 0.0, 0.8]])
    np.testing.assert_allclose(mlgcn_adjacency(Y, tau=0.4, p=0.2), want)
    # a higher tau drops 0->1 and 2->0: node 0 alone, node 2's whole p goes to node 1
    want_hi = np.array([[0.8, 0.0, 0.0, 0.0],
                        [0.1, 0.8, 0.1, 0.0],
                        [0.0, 0.2, 0.8, 0.0],
                        [0.0, 0.0, 0.0, 0.8]])
    np.testing.assert_allclose(mlgcn_adjacency(Y, tau=0.6, p=0.2), want_hi)
    # normalization D^-1/2 A^T D^-1/2 (row sums 0.8 and 1.0)
    d = want_hi.sum(axis=1)
    np.testing.assert_allclose(normalize_adjacency(want_hi).numpy(), want_hi.T / np.sqrt(np.outer(d, d)), rtol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        mlgcn_adjacency(Y, tau=1.5)


def test_head_is_two_graph_convolutions():
    torch.manual_seed(0)
    a = mlgcn_adjacency(Y, 0.4, 0.2)
    emb = np.random.default_rng(0).normal(size=(4, 5))
    head = MLGCNHead(in_channels=6, num_outputs=4, adjacency=a, embeddings=emb, hidden=7)
    pooled = torch.randn(3, 6)
    adj = normalize_adjacency(a).numpy().astype(np.float64)
    w0 = head.gc1.weight.detach().numpy().T.astype(np.float64)
    w1 = head.gc2.weight.detach().numpy().T.astype(np.float64)
    h = adj @ emb @ w0
    h = np.where(h > 0, h, 0.2 * h)
    w = adj @ h @ w1
    np.testing.assert_allclose(head(pooled).detach().numpy(), pooled.numpy() @ w.T, rtol=1e-4, atol=1e-5)


def test_classifier_config_switch(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    # a registered training set whose image-level targets [abnormal, class 0, class 1] are Y's first three columns
    records = [{"image_id": i, "abnormal": int(r[0]), "annotations": [{"category_id": c - 1} for c in (1, 2) if r[c]]}
               for i, r in enumerate(Y)]
    name = "mlgcn_test_train"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.CLASSIFIER.NUM_CLASSES", "2", "MODEL.CLASSIFIER.HEAD", "mlgcn",
            "MODEL.CLASSIFIER.MLGCN.HIDDEN", "16", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"]
    model = build_model(get_detx_cfg(CLS_TINY, opts))
    assert isinstance(model.head, MLGCNHead)
    np.testing.assert_allclose(model.head.adjacency.numpy(), mlgcn_adjacency(Y[:, :3], 0.4, 0.2), rtol=1e-6)
    model.eval()
    out = model([{"image": torch.zeros(3, 64, 64)}])
    assert out[0]["cls_probs"].shape == (3,)
    # built for prediction (no training set registered): the adjacency comes from the checkpoint
    torch.save(model.state_dict(), tmp_path / "m.pth")
    other = build_model(get_detx_cfg(CLS_TINY, [*opts[:-4], "DATASETS.TRAIN", "('not_registered',)"]))
    np.testing.assert_allclose(other.head.adjacency.numpy(), np.eye(3))
    other.load_state_dict(torch.load(tmp_path / "m.pth"))
    np.testing.assert_allclose(other.head.adjacency.numpy(), model.head.adjacency.numpy())
    with pytest.raises(ValueError, match="HEAD"):
        build_model(get_detx_cfg(CLS_TINY, ["MODEL.DEVICE", "cpu", "MODEL.CLASSIFIER.HEAD", "gnn"]))
    DatasetCatalog.remove(name)
