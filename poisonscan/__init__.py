"""The application without a server: the CLI, the bench, the demo and the HTTP client.

The client (:mod:`poisonscan.client`) installs with the ``client`` extra alone.
"""
