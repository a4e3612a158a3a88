"""Files: local paths and object-store URIs, atomic publishing, leases, and the run and report folders."""
