"""Named Mobile DeepLabv3 weights (see backbone/named_weights.py): pass a name wherever a segmenter checkpoint goes
(`Segmenter.from_pretrained`, `load_deeplab`, `--weights`, `--seg`, tools/export.py). All are Google's TF DeepLab
MobileNetV2 PASCAL VOC models, converted on first use by deeplab_mobile/tf_import.py into $MNV2_CACHE/<name>.pt;
the coral and picamera2 files are taken from the real test assets ($MNV2_ASSETS) when present."""

from __future__ import annotations

from pathlib import Path

from backbone.named_weights import Download, PretrainedWeights, register
from deeplab_mobile.checkpoint import save_deeplab
from deeplab_mobile.presets import VOC_CLASSES

IMPORT_COMMAND = "python -m tools.import_tf_segmentation {file} --out {out}"
_INTERPRETER_CHECK = (
    "pytest tests/deeplab_mobile/test_deeplab_import.py (against the TFLite interpreter ai-edge-litert)"
)


def _convert(source: Path, out: Path) -> None:
    from deeplab_mobile.tf_import import import_tf_deeplab, provenance  # reads TF files: loaded only to convert

    model, settings = import_tf_deeplab(source)
    save_deeplab(model, out, source=provenance(source, settings))


def _voc(
    name: str, description: str, preset: str, licence: str, source: Download, figure: str, measured_by: str
) -> PretrainedWeights:
    return PretrainedWeights(
        name,
        "deeplab",
        description,
        preset,
        VOC_CLASSES,
        licence,
        source,
        figure,
        measured_by,
        _convert,
        IMPORT_COMMAND,
    )


DEEPLAB_WEIGHTS = register(
    [
        _voc(
            "deeplab_tf_voc",
            "TF model zoo deeplabv3_mnv2_pascal_train_aug (frozen graph): width 1.0, OS16, 513×513",
            "tf_mnv2_pascal",
            "Apache-2.0 (TensorFlow models)",
            # Open Model Zoo publishes sha384 only for this tarball (models/public/deeplabv3/model.yml)
            Download(
                "https://download.tensorflow.org/models/deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz",
                "sha384:d3f2b27bb00c485ca45d68731f7198a23926cb865dd010fc444bcad9158e33413cd60da2588a9be3ff1e8c9b4557362b",
            ),
            "VOC 2012 val mIoU 75.32% as TF reports it; not measured here (no VOC val offline)",
            "python eval/voc_miou.py --weights deeplab_tf_voc --data voc --data-root VOCdevkit",
        ),
        _voc(
            "deeplab_coral_voc",
            "Google coral deeplabv3_mnv2_pascal_quant.tflite (uint8): width 1.0, OS16, 513×513",
            "tf_mnv2_pascal",
            "Apache-2.0 (google-coral/test_data)",
            Download(
                "https://github.com/google-coral/test_data/raw/master/deeplabv3_mnv2_pascal_quant.tflite",
                "sha256:350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
                "coral/deeplabv3_mnv2_pascal_quant.tflite",
            ),
            "mean IoU 0.969 / 0.984 / 0.980 on the 3 VOC val samples (TFLite interpreter: 0.969 / 0.985 / 0.981)",
            _INTERPRETER_CHECK,
        ),
        _voc(
            "deeplab_picamera2_257",
            "picamera2 example deeplabv3.tflite (float): width 0.5, OS8, 257×257 stretched",
            "tf_mnv2_dm05_pascal_257",
            "BSD-2-Clause (raspberrypi/picamera2)",
            Download(
                "https://github.com/raspberrypi/picamera2/raw/main/examples/tensorflow/deeplabv3.tflite",
                "sha256:9711334db2b01d5894feb8ed0f5cb3e97d125b8d229f8d8692f625801818f5ef",
                "picamera2/deeplabv3.tflite",
            ),
            "100% argmax agreement with the TFLite interpreter on the VOC samples",
            _INTERPRETER_CHECK,
        ),
    ]
)
