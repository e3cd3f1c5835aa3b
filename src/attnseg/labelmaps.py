"""Label-map conventions shared by the data set readers, the world's renderer and the metrics."""

# A ground-truth pixel with this value is scored by nothing (object borders, unlabelled areas); it is the value
# mmsegmentation, torchmetrics' ignore_index and the official VOC/COCO/Cityscapes maps use.
IGNORE_INDEX = 255
