# Test-only model: the implementation is shared in ../../fake_wan.py (top-level files are not models).
import os
import sys

sys.dont_write_bytecode = True  # a __pycache__/ dir in the repository root would be polled as a (broken) model
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from fake_wan import TritonPythonModel  # noqa: E402,F401
