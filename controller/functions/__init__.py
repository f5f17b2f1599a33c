"""Azure Functions blueprints, one module per trigger family. Entry points stay thin: parse, call a
use case in controller.service, map the result to what the host expects."""
