"""Models of loops: architectures (U-Net, Mask R-CNN), training, evaluation, export, detectron2 import.

The Triton repository builder is ``loopstream.serving.repository``.
"""
