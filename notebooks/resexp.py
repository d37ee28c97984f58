# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # resexp: see why residual learning works
#
# He et al. (2015) found the **degradation problem**: stack more layers onto a plain convolutional
# net and its *training* error gets worse, while the same net with identity shortcuts (a ResNet)
# gets better with depth. This notebook trains plain and residual nets of 20 and 56 layers on
# CIFAR-10, compares their curves, and asks one of resexp's analyses *why*.
#
# On Colab or Kaggle, choose a GPU runtime (Runtime > Change runtime type > T4 GPU): the sweep
# below then takes minutes. On a laptop CPU it trains one seed instead of three.

# %%
# Install resexp where it is not installed yet (Colab, Kaggle). REPO: where your copy of resexp
# lives (a fork or clone of this repository on GitHub); set RESEXP_REPO or edit the line.
import importlib.util
import os
import subprocess
import sys

REPO = os.environ.get("RESEXP_REPO", "https://github.com/YOUR-FORK/resexp")
if importlib.util.find_spec("resexp") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO}"], check=True)

# %%
# What to train. On a GPU: cifar_quick's sweep (plain/residual x 20/56 x 3 seeds, 400 iterations of
# 128 on 5,000 CIFAR-10 images). On a CPU: make demo's (the same nets and seeds, 320 iterations of 64,
# one run at a time, so that each run's lines show here: about 7.5 minutes on 2 cores). RESEXP_NOTEBOOK_SMOKE (the project's CI): a
# few iterations of small nets on synthetic images, to check that every cell runs.
import torch

SMOKE = bool(os.environ.get("RESEXP_NOTEBOOK_SMOKE"))
if SMOKE:
    SWEEP = ["data=synthetic", "data.train_size=128", "data.test_size=32", "data.batch_size=32", "model.depth=8,14"]
    SWEEP += ["data.subset=128", "schedule.iterations=8", "schedule.milestones=[6]", "eval_every=4", "seed=0", "device=cpu"]
EXPERIMENT = "cifar_quick" if SMOKE or torch.cuda.is_available() else "demo"
if not SMOKE:
    SWEEP = ["data.root=data", "data.download=true"]  # torchvision downloads CIFAR-10 into data/
FOLDER = f"runs/{EXPERIMENT}"
print("training:", f"+experiment={EXPERIMENT}", *SWEEP)

# %%
# Train (or resume: running the cell again continues where it stopped). Each run lands in
# runs/<experiment>/<data>/<mode>-<depth>..._s<seed>/ with its metrics, TensorBoard events and checkpoints.
from resexp import api

folders = api.train(f"+experiment={EXPERIMENT}", *SWEEP, multirun=True)
folders

# %% [markdown]
# ## The curves
#
# TensorBoard shows the training and test error of every run on one chart. The figure below is
# the paper's: plain nets left, residual nets right; thin dashed lines are training error.

# %%
if not SMOKE:  # TensorBoard inline (a server in the notebook's machine)
    get_ipython().run_line_magic("load_ext", "tensorboard")  # noqa: F821
    get_ipython().run_line_magic("tensorboard", f"--logdir {FOLDER}")  # noqa: F821

# %%
from IPython.display import Image, Markdown, display

figure, _ = api.plot(FOLDER)
display(Image(filename=str(figure)))
display(Markdown(api.report(FOLDER)))

# %% [markdown]
# ## Why: the signal through each net
#
# `signal` follows one training batch through each net: the stream's scale after every block, the
# gradient at every position, and how far each residual block is from the identity. Each verdict
# says what it was judged on; a claim about trained nets (a learned identity) is decided only on
# nets trained to convergence, which this short sweep is not (`why_trained` is: README, "Which
# explanation holds?").

# %%
result = api.analyze("signal", FOLDER)
for verdict in result.verdicts:
    print("-", verdict.outcome.upper(), "|", verdict.claim)
display(Image(filename=str(next(f for f in result.files if f.suffix == ".png"))))
