"""Local Azure for development, tests and the demo. Never deployed (.funcignore)."""
