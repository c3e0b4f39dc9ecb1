"""Lung segmentation: a U-Net (segmentation-models-pytorch, timm encoder) trained on the COVID DB's masks.

Masks it predicts feed the masked classifiers (eq. 9) and the Grad-CAM inside-lung check on datasets that
ship no masks (Kermany, a user's own radiographs). Modules: ``model`` (build, save, load), ``losses``
(Dice + BCE), ``metrics`` (Dice, IoU, intervals), ``data`` (image/mask pairs), ``train``, ``predict``,
``postprocess`` (two largest components, holes filled) and ``evaluate``. Nothing here is imported by
``import cxrtl``: torch and smp load only when a segmenter is used.
"""
