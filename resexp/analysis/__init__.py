"""`resexp analyze KIND FOLDER`: why residual learning works, measured on the user's own runs.

Kinds (one module each): responses (He et al. 2015, Fig. 7), gradients (gradient flow; Sec. 4.1),
lesion (Veit et al. 2016, Figs. 3 and 5), landscape (Li et al. 2018, Fig. 5), signal (signal
propagation: the lectures' explanations put to the numbers), paths (Veit et al. 2016, Fig. 6: the
gradient each path length carries). Each takes the nets of a folder of
runs, or of configs at initialisation (resexp.analysis.subjects), computes its numbers, and
returns a `Result` with its verdicts (resexp.analysis.verdict); the driver here writes
FOLDER/analysis/KIND.json (the numbers, one record per net), .png and .svg (KIND-init.* with
--at-init, KIND-config.* from a config; options away from their defaults named after a +, see
resexp.analysis.driver.file_stem), and the CLI prints the table and the verdicts.
"""
