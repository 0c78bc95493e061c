"""Fixtures of the app tests."""
import subprocess

import pytest

from testkit.app_helpers import SAMPLE_VIDEO


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The sample clip's first 20 frames as H.264."""
    path = tmp_path_factory.mktemp("clip") / "clip20.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SAMPLE_VIDEO), "-frames:v", "20",
                    "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True, timeout=60)
    return path
