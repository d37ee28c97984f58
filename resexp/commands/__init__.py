"""One module per command of the CLI (resexp.cli) and the API (resexp.api): analyze, bench (with
its reference loop), eval, export, import_, models, plot, report (and report_html), and the
terminal side they share (terminal). `resexp train` is resexp.launch.jobs.launch."""
