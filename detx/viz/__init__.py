"""detx.viz: drawing only (overlays, plots, the demo report); it imports no stage, only ``detx.core``."""
