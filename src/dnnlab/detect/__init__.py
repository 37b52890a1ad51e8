"""R-CNN-style detector, in stages: build (voc, proposals, labelling, build) -> train
(features, train, boxreg) -> detect (detector, selection) -> evaluate / output.
The trained detector is `detector.Detector`; its settings are `config.DetectorConfig`."""
