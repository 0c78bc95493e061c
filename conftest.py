# Make the checkout's own packages importable first (a worktree must test its own code).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
