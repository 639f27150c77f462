"""The bundled CC0/CC BY sample images (see README.md here)."""
