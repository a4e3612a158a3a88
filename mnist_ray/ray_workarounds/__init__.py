"""Every workaround for a Ray behaviour, one module each; a Ray upgrade touches this folder only."""
