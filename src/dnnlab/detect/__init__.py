"""R-CNN-style detector: selective search, IoU labels, frozen MobileNetV2 + head, NMS, mAP."""
