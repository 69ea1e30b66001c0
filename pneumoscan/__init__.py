"""pneumoscan: train, evaluate, explain and serve pediatric chest X-ray classifiers."""

import os
from importlib.metadata import PackageNotFoundError, version

# ONNX Runtime (1.29 on) sends usage telemetry from Linux and keeps a device ID under ~/.cache and a session file in
# $TMPDIR unless told not to before it is imported: a hospital's films are read by a tool that sends nothing out
# and leaves nothing behind unasked. ORT_DISABLE_TELEMETRY=0 given by the user is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    __version__ = version("pneumoscan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
