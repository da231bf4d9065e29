"""Pure measurement library: bytes in, digests out. No root, no loop devices, no mounting."""
