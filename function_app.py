"""The Azure Functions app (Python v2 programming model): only registers the blueprints.

Settings are validated at import, so a misconfigured deployment fails at start-up with a message
that names the setting instead of failing on the first event.
"""

import os

import azure.functions as func

from controller.functions import http, key_events, resource_events, sweep, work
from controller.settings import load_settings

load_settings(os.environ)

app = func.FunctionApp()
for module in (key_events, resource_events, sweep, work, http):
    app.register_functions(module.blueprint)
