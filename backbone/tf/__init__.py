"""Reading official TensorFlow weights without TensorFlow: frozen GraphDefs (graphdef.py), TFLite flatbuffers
(tflite.py), the layout and BatchNorm conventions they share (layout.py), and MobileNetV2 classifiers from TFLite
(classifier.py). The heads' importers (ssdlite/tf_import.py, deeplab_mobile/tf_import.py) build on these; the
command lines are tools/import_*.py."""
