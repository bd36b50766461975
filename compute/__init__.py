"""Compute: VMs started from images on thin-cloned volumes."""
