"""`cmkctl`, the operator CLI: one module per command group (events, keys, rewrap), assembled in main.

Every command builds what it needs through controller.bootstrap (the function app's composition root,
with the operator's credential) and calls the same use cases as the function app (controller.service,
controller.reconciler): what the CLI shows is what the controller sees.
"""

from controller.cli.main import main

__all__ = ["main"]
