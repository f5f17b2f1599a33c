"""Local Azure for development, tests and the demo: a program of its own (``python -m emulators``), run from
the checkout; never installed with the product (the wheel holds controller/ only) nor deployed (.funcignore)."""
