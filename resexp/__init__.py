"""resexp: plain and residual nets of He et al. 2015, trained, compared and analysed. From the
shell: the `resexp` command (resexp.cli); from Python: resexp.api (train, runs, report, html,
plot, analyze)."""
