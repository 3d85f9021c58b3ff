"""The thumbnails example: fetch an image, then resize it (see pipeline.yaml.example)."""
