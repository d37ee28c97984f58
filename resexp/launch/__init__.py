"""`resexp train` through Hydra: the config loader, run folders and the sweeper's split (hydra), and
the jobs of a command planned, checked and launched (jobs)."""
