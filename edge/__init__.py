"""noa-edge device side: capture, ROI, on-device inference, nomogram, result page.

Never imports TensorFlow, Keras or scikit-learn (tests/test_layering.py checks it).
"""

__version__ = "0.1.0"

DEMO_DISCLAIMER = "synthetic demo model — not for diagnosis"
