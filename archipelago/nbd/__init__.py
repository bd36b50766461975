"""The NBD server that exports volumes and snapshots to QEMU and other NBD clients."""
