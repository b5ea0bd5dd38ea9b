"""Internal helpers shared by both sides: isolation, signals, progress, staged output."""
