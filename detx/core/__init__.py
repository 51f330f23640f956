"""detx.core: the bottom tier every layer may import: shared types and conventions (predictions and ground truth,
the No-finding entry, image-level scores from detections, class vocabularies, the submission format, the one reader
of a prepared dataset with its PNG <-> original-pixel scaling, box operations, atomic I/O, the error base)."""
