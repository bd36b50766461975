"""Pure building blocks shared by every layer: hashes, the Merkle object hash, errors.

Nothing here does I/O."""
