"""The model a training run starts from: new (ImageNet or random weights), or transferred from a checkpoint.

:func:`create_model` is the public factory (``cxrtl.create_model``). A transfer (the paper's eq. 4-5) reuses a
trained checkpoint's backbone and, with ``keep_hidden``, its n->64 hidden layer; the last layer is new. The
model itself knows tensors and timm (:mod:`cxrtl.model`), checkpoints know files (:mod:`cxrtl.checkpoint`);
this module glues them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .checkpoint import load_checkpoint
from .errors import CxrtlError
from .model import CxrModel, check_classes, new_model

log = logging.getLogger(__name__)


def create_model(
    backbone: str | None = "densenet121",
    classes: Sequence[str] = ("0", "1"),
    in_chans: int = 3,
    init: str = "imagenet",
    keep_hidden: bool = False,
    pretrained_file: str | os.PathLike | None = None,
) -> CxrModel:
    """:func:`cxrtl.model.new_model`, where ``init`` may also be a checkpoint or run dir to transfer from.

    A transfer (eq. 4-5) reuses the checkpoint's backbone (``backbone`` None takes the checkpoint's) and,
    with ``keep_hidden``, its trained n->64 layer; the last layer is new, for ``classes``.
    """
    if init in ("imagenet", "none"):
        return new_model(backbone, classes, in_chans, init, keep_hidden, pretrained_file)
    return _transfer(init, backbone, check_classes(classes, in_chans), in_chans, keep_hidden)


def _transfer(
    path: str | os.PathLike, backbone: str | None, classes: list[str], in_chans: int, keep_hidden: bool
) -> CxrModel:
    """Backbone (and optionally the hidden layer) from a checkpoint, fresh last layer for ``classes``."""
    source, _meta = load_checkpoint(path)
    if backbone and backbone != source.backbone_name:
        raise CxrtlError(
            f"checkpoint {path} holds backbone {source.backbone_name}, not {backbone}; "
            "leave --backbone out for a transfer"
        )
    if source.in_chans != in_chans:
        raise CxrtlError(
            f"checkpoint {path} takes {source.in_chans}-channel input, not {in_chans}; "
            f"use --channels {source.in_chans}"
        )
    model = CxrModel(
        source.backbone, classes, in_chans, source.backbone_name, hidden=source.head[0].out_features
    )
    if keep_hidden:
        model.head[0].load_state_dict(source.head[0].state_dict())
    log.info(
        "transfer from %s (%s, classes %s): %s",
        path,
        source.backbone_name,
        source.classes,
        "kept hidden layer, new last layer" if keep_hidden else "new head",
    )
    return model
