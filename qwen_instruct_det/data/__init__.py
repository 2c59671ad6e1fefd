"""Every stage from a COCO-format file to instruction rows: read and check, images, the five tasks, the datasets builder."""
