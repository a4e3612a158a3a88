"""The jobs' logic as importable ``main(argv) -> int`` functions; ``jobs/*.py`` are the entrypoint shims."""
