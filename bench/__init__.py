"""The benchmark suite: the same lab, the same moment, Trellis against the direct path and peers."""
