"""`python -m resexp ...`: the same command line as `resexp ...`."""

from resexp.cli import app

app(prog_name="resexp")
