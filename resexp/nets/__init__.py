"""Plain and residual networks of He et al. 2015, "Deep Residual Learning for Image Recognition",
and the counterfactual designs that ask why they train.

One spec table per family and one stage builder serve every depth:

- CIFAR (Sec. 4.2): a 3x3 conv stem of width 16, three stages of n basic blocks with widths
  16/32/64 (stride 2 at the first block of stages 2 and 3), global average pooling, a linear
  head; depth = 6n + 2. Option A parameter counts with a 10-way head: ResNet-20 0.27M,
  -32 0.46M, -44 0.66M, -56 0.85M, -110 1.7M, -1202 19.4M. With bottleneck blocks (`body`,
  He et al. 2016's deepest CIFAR nets) depth = 9n + 2 and stages of widths 64/128/256 (16/32/64
  inside each block): pre-activation ResNet-164 1.7M, ResNet-1001 10.2M.
- ImageNet (Sec. 3.4, Table 1): a 7x7/2 conv stem of width 64 and a 3x3/2 max-pool, four stages
  of basic blocks (18, 34) or bottleneck blocks (50, 101, 152) with widths 64/128/256/512
  (x4 at the output of a bottleneck), global average pooling, a linear head. With option B the
  residual nets have exactly torchvision's resnet18/34/50 parameter counts. As in the paper
  (and unlike torchvision's "v1.5"), a bottleneck block downsamples in its first 1x1 conv.

Plain vs residual is one switch: a block's `shortcut` is None in a plain net, and the block
then simply skips the addition. Shortcut options carry the paper's names (Sec. 3.3, 4.1):
A zero-pads the identity where the shape changes (no parameters), B projects (1x1 conv + BN)
only where the shape changes, C projects in every block.

The counterfactuals, each one switch (the defaults build the 2015 nets, module for module):
- `norm`: `batch` (BN after every conv, the paper's) or `none` (no normalisation; every conv
  has a bias).
- `block`: `post` (the 2015 block: conv-BN-ReLU-conv-BN, add, ReLU) or `pre` (full
  pre-activation, He, Zhang, Ren and Sun 2016, "Identity Mappings in Deep Residual Networks":
  BN-ReLU-conv twice, the addition last and nothing after it, so the identity path runs clean
  from the stem to a final BN-ReLU before pooling). As the paper's code builds it
  (KaimingHe/resnet-1k-layers, resnet-pre-act.lua): a unit that changes the shape applies its
  BN-ReLU before the split, so that its shortcut reads the pre-activated input; its projection is
  a bare 1x1 conv (no BN after it); a pre-activation bottleneck strides in its first 1x1 conv.
  Where resexp departs from that code: the ImageNet stem keeps its BN-ReLU (conv-BN-ReLU-max-pool),
  and option A (a zero-padded identity) may be chosen for a pre-activation net, which that code
  never does.
- `init` (resexp.nets.inits): He, Xavier (Glorot normal), zero-gamma, SkipInit or Fixup.
- Fixup (Zhang, Dauphin and Ma 2019) has no normalisation and no per-channel biases in its
  branches: scalar biases and a scalar multiplier only (resexp.nets.blocks.fixup_body), as that paper builds it.

`DESIGN_CHANGES` (resexp.nets.spec) names the designs whose build changed since runs were made with them, so that
loading such a run's weights says why it cannot be loaded, in one line.
"""
