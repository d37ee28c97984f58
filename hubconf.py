"""torch.hub entry point: any resexp net, optionally with trained weights.

    net = torch.hub.load("path/to/resexp", "resexp_net", source="local", depth=56, mode="plain")
    net = torch.hub.load("path/to/resexp", "resexp_net", source="local", weights="resnet56.pt")

`weights` is a file written by `resexp export RUN --to state_dict OUT`, or a run's checkpoint
(`last.pt`): the net is built from the fields stored with them, and any field also given here must
agree. Without weights the net is freshly initialised as `resexp train` would start it.
"""

dependencies = ["torch"]


def resexp_net(
    depth: int | None = None,
    mode: str | None = None,
    family: str | None = None,
    shortcut: str | None = None,
    num_classes: int | None = None,
    norm: str | None = None,
    init: str | None = None,
    block: str | None = None,
    body: str | None = None,
    weights: str | None = None,
):
    """A resexp net (defaults: ResNet-20 for CIFAR-10, option A, BN, He init, the 2015 block)."""
    from resexp import identity
    from resexp.rundir import weights as stored

    given = {
        "model.depth": depth,
        "model.mode": mode,
        "model.family": family,
        "model.shortcut": shortcut,
        "model.norm": norm,
        "model.init": init,
        "model.block": block,
        "model.body": body,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if weights is None:
        fields = {**stored.fields_of(identity.defaults()), **given}
        if num_classes is None:
            num_classes = 1000 if str(fields["model.family"]) == "imagenet" else 10
        return stored.build(fields, num_classes)
    fields, classes, tensors = stored.load(weights)
    for key, value in given.items():
        if str(fields.get(key)) != str(value):
            raise ValueError(f"{weights} holds a net with {key}={fields.get(key)}, not {value}")
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"{weights} holds a net with {classes} classes, not {num_classes}")
    net = stored.build(fields, classes)
    return stored.load_into(net, fields, tensors, weights).eval()
