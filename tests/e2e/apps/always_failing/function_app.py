"""A function app whose queue function always fails: exercises the host's retry and poison semantics."""

import azure.functions as func

app = func.FunctionApp()


@app.function_name("always_fails")
@app.queue_trigger(arg_name="message", queue_name="%FAILING_QUEUE%", connection="AzureWebJobsStorage")
def always_fails(message: func.QueueMessage) -> None:
    raise RuntimeError(f"attempt {message.dequeue_count} fails on purpose")
