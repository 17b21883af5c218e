"""Command-line tools run from the checkout (make image-check, make lock)."""
