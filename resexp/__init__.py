"""resexp: plain and residual nets of He et al. 2015, trained, compared and analysed. From the
shell: the `resexp` command (resexp.cli); from Python: resexp.api (train, runs, report, html,
plot, analyze)."""

# The version that run folders and checkpoints are spoken of by ("checkpoints of resexp 0.2"): 0.1's
# checkpoints hold numpy's RNG state as an array; 0.2's do not say where their run began; 0.3's carry their
# provenance (resexp.rundir.checkpoints.PROVENANCE). All of them still read and resume. Equal to
# pyproject.toml's version (tests/test_layers.py).
__version__ = "0.3.0"
