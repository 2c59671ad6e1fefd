"""Scoring detections: the detections shape and its checks, matching at an IoU threshold, COCO mAP, the report."""
