"""What ``cxrtl reproduce`` takes (:class:`ReproduceOptions`) and the names its output directory uses."""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "reproduction.json"
PROTOCOLS = ("paper", "patient", "official")
POSITIVE = {"covid": "COVID", "pneumonia": "PNEUMONIA"}
SYNTH_MARKER = ".cxrtl-synth.json"  # written by `cxrtl data synth` beside the two dataset folders


@dataclass
class ReproduceOptions:
    """Everything `cxrtl reproduce` takes; the first block identifies a reproduction, the rest is runtime."""

    covid: str
    pneumonia: str | None
    out: str
    profile: str = "quick"
    experiments: str | None = None
    split_protocol: str = "paper"
    exclude_overlap: bool = False
    seed: int = 2022
    seeds: int = 1  # training seeds per configuration: seed, seed + 1, ... (the split stays fixed)
    precision: str = "fp32"  # numerics of the test evaluations (training keeps its own: bf16 on CUDA)
    conformal: float | None = 0.1  # alpha of the conformal sets fitted for every run (None: none)
    backbone: str | None = None  # default: the profile's (densenet121)
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    max_per_class: int | None = None
    allow_random_init: bool = False
    pretrained_file: str | None = None
    segmenter_epochs: int | None = None  # the lung U-Net on the COVID split; default: the profile's (0: none)
    pneumonia_masks: str | None = (
        None  # lung masks for the pneumonia set (default: the segmenter writes them)
    )
    external: str | None = None  # an external COVID set (folder or manifest) for the best COVID model
    external_class_map: str | None = None  # its labels -> the COVID classes (inline or YAML)
    device: str = "auto"
    workers: int = 0
    cache_dir: str | None = None
    progress: bool = True
