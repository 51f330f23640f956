"""detx.inference: batched prediction in original pixels, TTA, WBF ensembling, the image-level classifier."""
