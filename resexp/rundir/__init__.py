"""A run folder on disk: its files, written atomically under a lock (folder), read back (read),
its checkpoints (checkpoints), its trained weights and exported files (weights), and runs grouped
into experiments (experiments)."""
