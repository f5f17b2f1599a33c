"""A function app whose queue function holds a message named "slow" until a file appears, and records every
other message it handled in that directory: exercises the host's batching (no head-of-line blocking)."""

import os
import time
from pathlib import Path

import azure.functions as func

app = func.FunctionApp()


@app.function_name("handle")
@app.queue_trigger(arg_name="message", queue_name="%SLOW_QUEUE%", connection="AzureWebJobsStorage")
def handle(message: func.QueueMessage) -> None:
    directory = Path(os.environ["SLOW_DIRECTORY"])
    body = message.get_body().decode()
    if body == "slow":
        deadline = time.monotonic() + 60
        while not (directory / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    (directory / f"done-{body}").write_text(body)
