"""Phone photos that PIL does not open alone: HEIC/HEIF (the iPhone camera's default), read through pillow-heif's
PIL plugin. Importing this module registers it; every reader of a user's image files imports it."""

from pillow_heif import register_heif_opener

register_heif_opener()
