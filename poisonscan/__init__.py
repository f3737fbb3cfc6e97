"""The ``poisonscan`` command: library commands plus the service's serve/worker/demo."""
