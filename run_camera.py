#!/usr/bin/env python3
"""The app's entry point: `python run_camera.py --source 0 --model model.onnx --output display`.

The same program as `bisenet run`; the flags, presets and pipeline live in app/run.py.
"""
import sys

from app.run import main

if __name__ == "__main__":
    sys.exit(main())
