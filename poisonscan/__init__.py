"""The application without a server: the CLI, the bench, the demo (and soon the HTTP client)."""
